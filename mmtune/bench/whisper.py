"""Benchmark: a Whisper model of real size through mmtune's code path, with no hub.

    mmtune bench whisper --preset small

The preset's WhisperForConditionalGeneration is built from its config values (`small` has
whisper-small's: 12 + 12 layers, d_model 768, 241.7 M parameters, the 51,865-token multilingual
vocabulary of the shipped tokenizer) with random weights, the encoder and decoder planned as asked
(LoRA by default, as config_real.yaml trains whisper-small), and run as training runs it: clips
encoded by `SampleEncoder` (padded to the 30 s window), `collate_padded`, AdamW from
`mmtune.train.optim`, one warm-up step, then `steps` timed steps; then a checkpoint is saved,
loaded back from disk and must give the same loss, and the loaded model transcribes the clips
(greedy, `max_new_tokens`). Figures: trainable / total parameters, step_s, peak_mb (VmHWM above
the resident size before the model was built; on CUDA max_memory_allocated), save_s, load_s,
the loss difference after the round trip, generate_s.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mmtune.bench.report import measure_steps, peak_of, run_child, status_kb, torch_threads

PRESETS = {
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500,
                 max_target_positions=448),
    "small": dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, num_mel_bins=80,
                  max_source_positions=1500, max_target_positions=448),  # openai/whisper-small's config.json
}
TRANSCRIPTS = ["three one four one five", "nine two six", "zero seven eight", "five three five"]


def default_tokenizer() -> str:
    """The shipped Whisper tokenizer (examples/whisper_digits/tokenizer in a source checkout)."""
    return str(Path(__file__).resolve().parents[2] / "examples" / "whisper_digits" / "tokenizer")


def run(preset: str = "small", encoder: str = "lora", decoder: str = "lora", batch: int = 2, steps: int = 1,
        max_new_tokens: int = 8, device: str = "cpu", threads: int | None = None, tokenizer: str | None = None) -> dict:
    tokenizer = tokenizer or default_tokenizer()
    if not Path(tokenizer).is_dir():
        raise FileNotFoundError(f"no Whisper tokenizer at {tokenizer}: pass --tokenizer DIR (a Whisper tokenizer "
                                f"folder, e.g. examples/whisper_digits/tokenizer of an mmtune checkout)")
    args = dict(preset=preset, encoder=encoder, decoder=decoder, batch=batch, steps=steps,
                max_new_tokens=max_new_tokens, device=device, threads=threads, tokenizer=tokenizer)
    result = run_child("mmtune.bench.whisper", args)
    return {"bench": "whisper", "config": PRESETS[preset], **args, "threads": threads or torch.get_num_threads(),
            **result}


# ----------------------------------------------------------------------------- in the child process


def _clips(folder: Path, n: int) -> list[str]:
    """n synthetic clips of 2-5 s (tones with noise) written as WAV files."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        t = np.arange(int(16000 * (2 + i % 4))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (180 + 60 * i) * t) + 0.02 * rng.standard_normal(t.shape)
        paths.append(str(folder / f"{i}.wav"))
        sf.write(paths[-1], wave.astype(np.float32), 16000)
    return paths


def _measure(args: dict) -> dict:
    from mmtune.collators import collate_padded
    from mmtune.config import DataConfig, LoraConfig, ModelConfig, TrainConfig, WhisperModelConfig
    from mmtune.data.encode import MediaSpec, SampleEncoder
    from mmtune.data.formats import Sample
    from mmtune.data.example import to_device
    from mmtune.infer.generate import generate
    from mmtune.model.build import build_model
    from mmtune.model.checkpoint import load_checkpoint, save_checkpoint
    from mmtune.model.plan import count_parameters
    from mmtune.train.optim import build_optimizer

    device = args["device"]
    cuda = torch.device(device).type == "cuda"
    with torch_threads(args["threads"]), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = torch.cuda.memory_allocated() if cuda else status_kb("self", "VmRSS") * 1024
        cfg = ModelConfig(whisper=WhisperModelConfig(config=dict(PRESETS[args["preset"]]), tokenizer=args["tokenizer"],
                                                     encoder=args["encoder"], decoder=args["decoder"]),
                          lora=LoraConfig(r=16, alpha=32, dropout=0.0), attn_implementation="sdpa")
        model, tokenizer = build_model(cfg, device=device)
        model.to(device).train()
        data = DataConfig()
        encoder = SampleEncoder(tokenizer, MediaSpec.from_config(cfg, data), data)
        samples = [Sample([{"role": "user", "content": [{"type": "audio", "path": p}]},
                           {"role": "assistant", "content": [{"type": "text", "text": TRANSCRIPTS[i % 4]}]}],
                          f"bench:{i}") for i, p in enumerate(_clips(folder, args["batch"]))]
        batch = to_device(collate_padded([encoder(s) for s in samples], tokenizer.pad_token_id), device)
        optimizer = build_optimizer(model, TrainConfig(lr=1e-5), cfg)
        resident, seconds, peak = measure_steps(model, optimizer, batch, args["steps"], device, base)
        model.eval()
        with torch.no_grad():
            loss = float(model(**batch).loss_sum)
        save_s, _ = peak_of(lambda: save_checkpoint(model, tokenizer, cfg, folder / "ckpt"), device)
        loaded = {}
        load_s, _ = peak_of(lambda: loaded.update(model=load_checkpoint(folder / "ckpt", device=device)[0]), device)
        with torch.no_grad():
            loss_loaded = float(loaded["model"](**batch).loss_sum)
        prompts = [encoder.prompt(s) for s in samples]
        texts = []
        generate_s, _ = peak_of(lambda: texts.extend(generate(loaded["model"], tokenizer, prompts,
                                                              max_new_tokens=args["max_new_tokens"])), device)
        trainable, total = count_parameters(model)
        return {"trainable": trainable, "total": total, "step_s": seconds / args["steps"],
                "peak_mb": (resident + peak) / 2**20, "save_s": save_s, "load_s": load_s,
                "checkpoint_mb": (folder / "ckpt" / "model.safetensors").stat().st_size / 2**20,
                "loss_after_reload_diff": abs(loss - loss_loaded), "generate_s": generate_s,
                "generated": [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]}


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
