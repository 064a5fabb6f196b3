"""Benchmark: one long packed row, training step memory and speed, plain loss against the chunked one.

    mmtune bench long --lengths 1024 4096 32768

An LLM with Qwen2.5's 151,936-token vocabulary and a small hidden size (64, 2 layers: so 32k
tokens run on a CPU) trains one packed row of `length` tokens made of 1,024-token samples, every
position supervised (the loss's worst case: chunking is all it has, no positions are skipped).
Each (length, loss) runs in a fresh process; peak memory is the kernel's high-water mark (VmHWM,
reset before the measured call) above the resident size before it (model, no optimizer, the batch):
    decoder  the LLM without its output head: forward, backward of the hidden states' sum;
             what the rest of the step costs, whatever the loss
    chunked  mmtune's loss (`mmtune.model.loss`): supervised positions, checkpointed chunks
    full     today's (before): float32 logits (T, V) for every position, then cross entropy
`peak_mb` is the whole training step's; `loss_peak_mb` the loss's own: forward and backward of the
loss alone on the decoder's hidden states (a leaf tensor), head gradient included. A `full` run
whose logits would not fit in the memory available is skipped and its figures extrapolated from
the measured lengths (they are linear in length). On CUDA the figures are max_memory_allocated.
"""

import json
import sys

import torch

from mmtune.bench.report import peak_of, run_child

VOCAB = 151_936  # Qwen2.5's vocabulary (the 0.5b preset's LLM)
SAMPLE_TOKENS = 1024  # tokens per packed sample
MODES = ("decoder", "chunked", "full")


def run(lengths=(1024, 2048, 4096, 8192, 16384, 32768), device: str = "cpu", threads: int | None = None,
        hidden: int = 64, vocab: int = VOCAB) -> dict:
    rows = []
    for length in lengths:
        row = {"tokens": length}
        for mode in MODES:
            need = _full_logits_bytes(length, vocab)
            if mode == "full" and need > 0.8 * _available_bytes(device):
                row[mode] = {"skipped": f"needs ~{need / 2**30:.1f} GiB for logits, their log-softmax and gradient"}
                continue
            row[mode] = run_child("mmtune.bench.long", dict(length=length, mode=mode, device=device,
                                                            threads=threads, hidden=hidden, vocab=vocab))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"bench": "long", "device": _device_name(device), "vocab": vocab, "hidden": hidden,
            "sample_tokens": SAMPLE_TOKENS, "threads": threads or torch.get_num_threads(), "rows": rows,
            "targets": targets(rows)}


def targets(rows: list[dict]) -> dict:
    """The issue's two targets: loss peak at the longest row, full / chunked (>= 10); and growth of the
    chunked step's peak per token (MB per 1k tokens) beside the full loss's."""
    longest = rows[-1]
    full = _fit([(r["tokens"], r["full"]["loss_peak_mb"]) for r in rows if "loss_peak_mb" in r["full"]])
    measured = "loss_peak_mb" in longest["full"]
    full_at = longest["full"]["loss_peak_mb"] if measured else (full and full[0] + full[1] * longest["tokens"])
    chunked = _fit([(r["tokens"], r["chunked"]["peak_mb"]) for r in rows])
    out = {"tokens": longest["tokens"], "chunked_loss_peak_mb": longest["chunked"]["loss_peak_mb"],
           "full_loss_peak_mb": full_at, "full_loss_peak": "measured" if measured else "extrapolated"}
    if full_at:
        out["loss_peak_ratio"] = full_at / max(longest["chunked"]["loss_peak_mb"], 1.0)
    if chunked:
        out["chunked_step_mb_per_1k_tokens"] = chunked[1] * 1000
    if full:
        out["full_loss_mb_per_1k_tokens"] = full[1] * 1000
    return out


def _fit(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares line (intercept, slope) through (tokens, MB); None under two points."""
    if len(points) < 2:
        return None
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - slope * mx, slope


def _full_logits_bytes(length: int, vocab: int) -> int:
    return 3 * length * vocab * 4  # logits, their log-softmax and its gradient, float32


def _available_bytes(device: str) -> int:
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- in the child process


def _model(hidden: int, vocab: int, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmtune.model.bridge import MultimodalLM
    from mmtune.model.varlen import register_varlen_attention

    config = AutoConfig.for_model("qwen2", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                  max_position_embeddings=SAMPLE_TOKENS, tie_word_embeddings=True)
    llm = AutoModelForCausalLM.from_config(config, attn_implementation=register_varlen_attention())
    model = MultimodalLM(llm, token_ids={}, attn_kwargs_for_packing=True).to(device)
    return model.train()


def _batch(length: int, vocab: int, device: str) -> dict:
    """One packed row of `length` tokens in 1,024-token samples, every label supervised."""
    from mmtune.collators import collate_packed
    from mmtune.data.example import Example

    gen = torch.Generator().manual_seed(0)
    sizes = [SAMPLE_TOKENS] * (length // SAMPLE_TOKENS) + ([length % SAMPLE_TOKENS] if length % SAMPLE_TOKENS else [])
    examples = []
    for n in sizes:
        ids = torch.randint(0, vocab, (n,), generator=gen)
        examples.append(Example(ids, ids.clone()))
    batch = collate_packed(examples)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _decoder_hidden(model, batch: dict) -> torch.Tensor:
    """The packed row through the LLM without its output head -> (1, T, D)."""
    embeds = model.embed(batch["input_ids"])
    cu, longest = batch["cu_seqlens"], batch["max_seqlen"]
    return model.llm.get_decoder()(inputs_embeds=embeds, position_ids=batch["position_ids"], use_cache=False,
                                   cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest,
                                   max_length_k=longest).last_hidden_state


def _step(model, batch: dict, mode: str) -> None:
    """One training step's forward and backward (no optimizer)."""
    from mmtune.model.loss import full_logits_loss

    if mode == "chunked":
        loss = model(**batch).loss_sum
    elif mode == "full":
        loss, _ = full_logits_loss(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
    else:
        loss = _decoder_hidden(model, batch).float().sum()
    loss.backward()


def _loss_alone(model, hidden: torch.Tensor, labels: torch.Tensor, mode: str) -> None:
    """The loss on hidden states (1, T, D), forward and backward, as the step computes it."""
    from mmtune.model.loss import chunked_loss, full_logits_loss, supervised_targets

    head = model.llm.get_output_embeddings()
    if mode == "chunked":
        keep, targets = supervised_targets(labels)
        loss = chunked_loss(hidden[keep], targets, head, model.loss_chunk_elements)
    else:
        loss, _ = full_logits_loss(head(hidden), labels)
    loss.backward()


def _measure(args: dict) -> dict:
    device, mode = args["device"], args["mode"]
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    model = _model(args["hidden"], args["vocab"], device)
    batch = _batch(args["length"], args["vocab"], device)
    seconds, peak = peak_of(lambda: _step(model, batch, mode), device)
    out = {"peak_mb": peak / 2**20, "step_s": seconds, "tokens_per_s": args["length"] / seconds}
    if mode != "decoder":
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            hidden = _decoder_hidden(model, batch)
        hidden.requires_grad_()
        _, loss_peak = peak_of(lambda: _loss_alone(model, hidden, batch["labels"], mode), device)
        out["loss_peak_mb"] = loss_peak / 2**20
    return out


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
