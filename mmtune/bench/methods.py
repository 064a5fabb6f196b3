"""Benchmark: one LLM fine-tuned each way mmtune offers, side by side.

    mmtune bench methods --preset 0.5b

Each method runs in a fresh process: the preset's LLM (random weights from its config; `0.5b` has
Qwen2.5-0.5B's sizes and 151,936-token vocabulary) built through mmtune's plans for that method,
AdamW as training builds it (`mmtune.train.optim`), one warm-up step, then `steps` optimizer steps
on `batch` random sequences of `tokens` tokens, every position supervised. Figures:
    trainable   parameters the optimizer updates (hft: in one round)
    parameters  all of the model's parameters
    llm_mb      the LLM's parameters and buffers as held (4-bit codes and their scales for qlora)
    peak_mb     peak memory of the measured steps above the resident size before the model was built
                (VmHWM; on CUDA max_memory_allocated): weights, gradients, optimizer state, activations
    step_s      seconds per optimizer step
"""

import json
import sys
import tempfile

import torch

from mmtune.bench.report import measure_steps, run_child, torch_threads

METHODS = {  # name -> (llm plan, model.lora settings)
    "lora": ("lora", {}),
    "dora": ("lora", {"use_dora": True}),
    "rslora": ("lora", {"use_rslora": True}),
    "loraplus": ("lora", {"loraplus_lr_ratio": 16.0}),
    "qlora": ("qlora", {}),
    "full": ("full", {}),
    "hft": ("hft", {}),  # Half Fine-Tuning: one round's half of every layer (mmtune.train.hft)
}
PRESETS = {
    "tiny": dict(model_type="qwen2", hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True),
    "0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                 tie_word_embeddings=True, rope_theta=1e6),
}


def run(preset: str = "0.5b", methods=tuple(METHODS), tokens: int = 128, batch: int = 2, steps: int = 2,
        device: str = "cpu", threads: int | None = None) -> dict:
    rows = {}
    for method in methods:
        rows[method] = run_child("mmtune.bench.methods", dict(preset=preset, method=method, tokens=tokens,
                                                               batch=batch, steps=steps, device=device,
                                                               threads=threads))
        print(json.dumps({method: rows[method]}), file=sys.stderr, flush=True)
    base = rows.get("lora")
    if base and "qlora" in rows:
        rows["qlora"]["llm_mb_vs_lora"] = rows["qlora"]["llm_mb"] / base["llm_mb"]
        rows["qlora"]["peak_mb_vs_lora"] = rows["qlora"]["peak_mb"] / base["peak_mb"]
    return {"bench": "methods", "preset": preset, "llm": PRESETS[preset], "tokens": tokens, "batch": batch,
            "steps": steps, "device": device, "threads": threads or torch.get_num_threads(), "methods": rows}


# ----------------------------------------------------------------------------- in the child process


def _model(preset: str, method: str, device: str, tokenizer_dir: str):
    from mmtune.config import LLMConfig, LoraConfig, ModelConfig
    from mmtune.model.build import build_model

    plan, lora = METHODS[method]
    cfg = ModelConfig(llm=LLMConfig(config=dict(PRESETS[preset]), tokenizer=tokenizer_dir, train=plan),
                      lora=LoraConfig(**lora), attn_implementation="sdpa")
    cfg.quantization.compute_dtype = "float32" if torch.device(device).type == "cpu" else "bfloat16"
    model, _ = build_model(cfg, device=device)
    return model.to(device).train(), cfg


def _measure(args: dict) -> dict:
    from mmtune.bench.packing import CORPUS
    from mmtune.bench.report import status_kb
    from mmtune.config import TrainConfig
    from mmtune.model.quantize import storage_bytes
    from mmtune.model.tokenizer import save_tokenizer, train_tokenizer
    from mmtune.train.hft import HalfFineTuning
    from mmtune.train.optim import build_optimizer

    device = args["device"]
    with torch_threads(args["threads"]), tempfile.TemporaryDirectory() as folder:
        cuda = torch.device(device).type == "cuda"
        base = torch.cuda.memory_allocated() if cuda else status_kb("self", "VmRSS") * 1024
        save_tokenizer(train_tokenizer(CORPUS, vocab_size=400), folder)
        model, cfg = _model(args["preset"], args["method"], device, folder)
        optimizer = build_optimizer(model, TrainConfig(lr=1e-4), cfg)
        gen = torch.Generator().manual_seed(0)
        vocab = PRESETS[args["preset"]]["vocab_size"]
        ids = torch.randint(0, vocab, (args["batch"], args["tokens"]), generator=gen).to(device)
        batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
        hft = HalfFineTuning.of(model, {"llm": METHODS[args["method"]][0]}, 1, 0, args["steps"] + 1)
        drop = None if hft is None else (lambda: hft.drop_frozen(1))  # round 1's frozen half gets no Adam state
        resident, seconds, peak = measure_steps(model, optimizer, batch, args["steps"], device, base, drop)
        frozen = sum(p.numel() for p in hft.frozen) if hft is not None else 0
        return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad) - frozen,
                "parameters": sum(p.numel() for p in model.parameters()),
                "llm_mb": storage_bytes(model.llm) / 2**20, "peak_mb": (resident + peak) / 2**20,
                "step_s": seconds / args["steps"]}


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
