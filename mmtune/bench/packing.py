"""Benchmark: the same samples trained padded and packed, step by step in alternation.

The samples are a realistic mix made directly as `Example`s (no files): half speech (clips of
1-20 s, log-normal, median 4 s, as random log-mel with exactly `num_audio_tokens` placeholders
and a transcript-length answer), a quarter images (`num_image_tokens` placeholders, a question
and an answer), a quarter instruction-length text. Labels cover the answers only.

Three fresh copies of one randomly initialized model (same seed) train on them, one step each
in turn, so the machine's state affects all alike:
    padded   `batch_size` samples per row-padded batch in shuffled order (a stock padded run), SDPA
    grouped  the same batches sizes, length-grouped by `mmtune.data.sampler` (the mmtune default), SDPA
    packed   rows of `max_tokens`, best fit in shuffled order as training packs them (about
             batch_size x the mean sample length, so a step holds as many samples on average),
             varlen attention with cu_seqlens
Tokens/s counts real (non-pad) tokens. `loss_abs_diff` compares the mean token loss of the
same samples at the initial weights (eval mode), padded against packed: per-token sums, so
grouping does not matter. On CUDA (`preset="0.5b"`, bf16) MFU, peak memory and the relative
error of the packed logits are added.
"""

import copy
import math
import tempfile

import numpy as np
import torch

from mmtune.bench.report import check_device, machine, peak_flops, timed, torch_threads
from mmtune.collators import collate_packed, collate_padded
from mmtune.audio.features import FRAMES_PER_SECOND
from mmtune.config import LLMConfig, LoraConfig, ModelConfig, ProjectorConfig, TowerConfig
from mmtune.data.example import IGNORE_INDEX, Example, to_device
from mmtune.data.sampler import length_grouped_batches, padding_stats, shuffled_batches, token_budget_batches
from mmtune.model.build import build_model
from mmtune.model.placeholders import num_audio_tokens, num_image_tokens
from mmtune.model.tokenizer import save_tokenizer, train_tokenizer

AUDIO_MEDIAN_S, AUDIO_SIGMA, AUDIO_RANGE_S = 4.0, 0.7, (1.0, 20.0)  # clip durations, s (log-normal)
TRANSCRIPT_TOKENS_PER_S = 3.5  # ~2.7 words/s of speech at ~1.3 tokens/word
MIX = {"audio": 0.5, "image": 0.25, "text": 0.25}  # share of samples of each kind

PRESETS = {
    "tiny": dict(  # CPU: big enough that compute, not Python, dominates a step
        llm=dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096),
        whisper=dict(model_type="whisper", d_model=128, encoder_layers=2, encoder_attention_heads=2,
                     encoder_ffn_dim=512, num_mel_bins=80, max_source_positions=1500),
        clip=dict(model_type="clip_vision_model", hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                  num_attention_heads=2, image_size=96, patch_size=8),
        dtype="float32", batch_size=8, max_tokens=2048, stack=2, num_samples=256),
    "0.5b": dict(  # GPU: Qwen2-0.5B, whisper-small's encoder, CLIP ViT-B/16, all random-initialized
        llm=dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                 tie_word_embeddings=True, rope_theta=1e6),
        whisper=dict(model_type="whisper", d_model=768, encoder_layers=12, encoder_attention_heads=12,
                     encoder_ffn_dim=3072, num_mel_bins=80, max_source_positions=1500),
        clip=dict(model_type="clip_vision_model", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=224, patch_size=16),
        dtype="bfloat16", batch_size=16, max_tokens=16384, stack=2, num_samples=1024),
}
CORPUS = ["Transcribe the audio.", "Describe the image in one sentence.", "What is shown here?",
          "Write a short answer to the question below.", "three one four one five nine two six"] * 20


def run(steps=None, num_samples=None, device="cpu", preset="tiny", seed=0, batch_size=None, max_tokens=None,
        eval_samples=48, peak_tflops=None, threads=None) -> dict:
    """Train padded, length-grouped padded and packed in alternation; `steps=None`: one epoch each.
    `peak_tflops`: the card's dense bf16 peak when it is not in the table; `threads`: CPU threads."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: use one of {', '.join(PRESETS)}")
    check_device(device)
    with torch_threads(threads):
        return _run(steps, num_samples, device, preset, seed, batch_size, max_tokens, eval_samples, peak_tflops)


def _run(steps, num_samples, device, preset, seed, batch_size, max_tokens, eval_samples, peak_tflops) -> dict:
    p = PRESETS[preset]
    batch_size, max_tokens = batch_size or p["batch_size"], max_tokens or p["max_tokens"]
    num_samples = num_samples or p["num_samples"]
    models, tokenizer = build_models(p, device, seed)
    examples = make_examples(num_samples, models["packed"], p, seed)
    lengths = [len(e) for e in examples]
    batches = {
        "padded": shuffled_batches(len(examples), batch_size, seed),
        "grouped": length_grouped_batches(lengths, batch_size, seed),
        "packed": token_budget_batches(lengths, max_tokens, padded=False, shuffle=True, seed=seed),  # as training
    }
    check = compare_eval(models["padded"], models["packed"], examples[:eval_samples], batch_size,
                         tokenizer.pad_token_id, device)
    trained = train_alternating(models, batches, examples, tokenizer.pad_token_id, device, steps, seed)
    result = {
        "padded_tokens_per_s": trained["padded"]["tokens_per_s"],
        "packed_tokens_per_s": trained["packed"]["tokens_per_s"],
        "speedup": trained["packed"]["tokens_per_s"] / trained["padded"]["tokens_per_s"],
        "grouped_tokens_per_s": trained["grouped"]["tokens_per_s"],
        "speedup_vs_grouped": trained["packed"]["tokens_per_s"] / trained["grouped"]["tokens_per_s"],
        "loss_abs_diff": abs(check["padded_loss"] - check["packed_loss"]),
        "padded_real_token_fraction": padding_stats(batches["padded"], lengths)["real_token_fraction"],
        "grouped_real_token_fraction": padding_stats(batches["grouped"], lengths)["real_token_fraction"],
        "packed_real_token_fraction": padding_stats(batches["packed"], lengths, max_tokens)["real_token_fraction"],
        **check,
        "steps": {mode: t["steps"] for mode, t in trained.items()},
        "real_tokens_per_step": {mode: t["tokens_per_step"] for mode, t in trained.items()},
        "samples_per_step": {mode: t["samples_per_step"] for mode, t in trained.items()},
        "final_train_loss": {mode: t["last_loss"] for mode, t in trained.items()},
        "num_samples": num_samples, "samples": _mix_counts(examples), "mean_sample_tokens": float(np.mean(lengths)),
        "batch_size": batch_size, "max_tokens": max_tokens,
        "attention": {"padded": "sdpa", "grouped": "sdpa", "packed": "varlen (cu_seqlens)"},
        "device": str(device), "preset": preset, "dtype": p["dtype"], **machine(),
    }
    if torch.device(device).type == "cuda":
        result |= gpu_figures(trained, peak_flops(device, peak_tflops))
    return result


# ---- models -----------------------------------------------------------------------------------


def model_config(p: dict, tokenizer_dir: str, attn: str, seed: int) -> ModelConfig:
    """LLM trained in full, towers frozen (as when training projectors + LLM), projectors trained."""
    return ModelConfig(
        llm=LLMConfig(config=dict(p["llm"]), tokenizer=tokenizer_dir, train="full"),
        audio=TowerConfig(config=dict(p["whisper"]), train="frozen",
                          projector=ProjectorConfig(type="stack", stack=p["stack"])),
        vision=TowerConfig(config=dict(p["clip"]), train="frozen", projector=ProjectorConfig(type="mlp", layers=2)),
        lora=LoraConfig(), attn_implementation=attn, dtype=p["dtype"], init_seed=seed)


def build_models(p: dict, device, seed: int) -> tuple[dict, object]:
    """{"padded", "grouped", "packed"}: identical weights; packed runs every layer through varlen."""
    with tempfile.TemporaryDirectory() as folder:
        save_tokenizer(train_tokenizer(CORPUS, vocab_size=400), folder)
        padded, tokenizer = build_model(model_config(p, folder, "sdpa", seed), device=str(device))
        packed, _ = build_model(model_config(p, folder, "varlen", seed), device=str(device))
    models = {"padded": padded, "grouped": copy.deepcopy(padded), "packed": packed}
    dtype = getattr(torch, p["dtype"])  # projectors too: no autocast here, every part computes in this dtype
    return {mode: m.to(device=device, dtype=dtype) for mode, m in models.items()}, tokenizer


# ---- samples ----------------------------------------------------------------------------------


def make_examples(n: int, model, p: dict, seed: int) -> list[Example]:
    """`n` samples of the MIX, deterministic given `seed`; media as random features of the right shapes,
    text as random ids over the LLM's vocabulary (placeholder ids left out)."""
    rng = np.random.default_rng(seed)
    vocab = model.llm.get_input_embeddings().num_embeddings
    kinds = rng.choice(list(MIX), size=n, p=list(MIX.values()))
    image = p["clip"]["image_size"]
    n_image = num_image_tokens(image, p["clip"]["patch_size"])
    special = set(model.token_ids.values())
    text = lambda k: [int(t) for t in rng.integers(10, vocab, size=max(1, int(k))) if t not in special] or [10]
    out = []
    for i, kind in enumerate(kinds):
        audio, images, media = [], [], []
        if kind == "audio":
            seconds = float(np.clip(rng.lognormal(math.log(AUDIO_MEDIAN_S), AUDIO_SIGMA), *AUDIO_RANGE_S))
            frames = int(seconds * FRAMES_PER_SECOND)
            audio = [torch.from_numpy(rng.standard_normal((p["whisper"]["num_mel_bins"], frames), np.float32))]
            media = [model.token_ids["audio"]] * num_audio_tokens(frames, p["stack"])
            prompt, answer = text(rng.integers(6, 20)), text(seconds * TRANSCRIPT_TOKENS_PER_S + 2)
        elif kind == "image":
            images = [torch.from_numpy(rng.standard_normal((3, image, image), np.float32))]
            media = [model.token_ids["image"]] * n_image
            prompt, answer = text(rng.integers(8, 40)), text(np.clip(rng.lognormal(math.log(40), 0.8), 4, 300))
        else:
            prompt = text(np.clip(rng.lognormal(math.log(60), 0.8), 8, 400))
            answer = text(np.clip(rng.lognormal(math.log(120), 0.8), 8, 600))
        ids = prompt[:3] + media + prompt[3:] + answer
        labels = [IGNORE_INDEX] * (len(ids) - len(answer)) + answer
        out.append(Example(torch.tensor(ids), torch.tensor(labels), audio, images, f"bench:{i}:{kind}"))
    return out


def _mix_counts(examples: list[Example]) -> dict:
    kinds = [e.source.rsplit(":", 1)[1] for e in examples]
    return {k: kinds.count(k) for k in MIX}


# ---- evaluation: same samples, same loss -------------------------------------------------------------


@torch.no_grad()
def compare_eval(padded_model, packed_model, examples, batch_size, pad_id, device) -> dict:
    """Mean token loss of `examples` at the initial weights, padded (SDPA) and packed (varlen), and
    the relative error ||packed - padded|| / ||padded|| of the logits over every real position.
    Each group of `batch_size` samples goes through both, as one padded batch and one packed row.

    `alone_logits_rel_err` is the floor to read it against: the padded model on each sample alone
    (a batch of one, no padding) against the same padded batch. In bf16 a different batch shape
    alone changes the rounding of every matmul; in fp32 both errors are ~1e-7."""
    padded_model.eval(), packed_model.eval()
    loss, tokens = {"padded": 0.0, "packed": 0.0}, {"padded": 0, "packed": 0}
    diff = ref = alone_diff = 0.0
    for k in range(0, len(examples), batch_size):
        group = examples[k : k + batch_size]
        padded_batch = to_device(collate_padded(group, pad_id), device)
        batch = to_device(collate_packed(group), device)
        for mode, model, b in (("padded", padded_model, padded_batch), ("packed", packed_model, batch)):
            out = model(**b)
            loss[mode] += float(out.loss_sum)
            tokens[mode] += out.num_tokens
        padded, packed = _logits(padded_model, padded_batch), _logits(packed_model, batch)  # (B, T, V), (1, T', V)
        bounds = batch["cu_seqlens"].tolist()
        for i, e in enumerate(group):
            expected = padded[i, : len(e)].float()  # (T_i, V)
            diff += float((packed[0, bounds[i] : bounds[i + 1]].float() - expected).square().sum())
            ref += float(expected.square().sum())
            alone = _logits(padded_model, to_device(collate_padded([e], pad_id), device))[0].float()  # (T_i, V)
            alone_diff += float((alone - expected).square().sum())
    assert tokens["padded"] == tokens["packed"], "padded and packed batches supervise different tokens"
    return {"padded_loss": loss["padded"] / tokens["padded"], "packed_loss": loss["packed"] / tokens["packed"],
            "logits_rel_err": math.sqrt(diff / ref), "alone_logits_rel_err": math.sqrt(alone_diff / ref),
            "eval_tokens": tokens["packed"], "eval_samples": len(examples)}


def _logits(model, batch: dict) -> torch.Tensor:
    """The model's logits for a batch (a forward with labels returns the loss only)."""
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


# ---- training --------------------------------------------------------------------------------------


def train_alternating(models: dict, batches: dict, examples, pad_id, device, steps, seed) -> dict:
    """One optimizer step of each mode in turn; per mode: steps, real tokens/s, FLOP/s, peak memory."""
    on_cuda = torch.device(device).type == "cuda"
    runs = {}
    for mode, model in models.items():
        n = steps if steps is not None else len(batches[mode])
        groups = [[examples[i] for i in batches[mode][s % len(batches[mode])]] for s in range(n)]
        optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
        runs[mode] = dict(model=model.train(), optimizer=optimizer, groups=groups, sizes=flop_sizes(model),
                          seconds=0.0, tokens=0, samples=0, flops=0.0, step_memory=0, last_loss=None)
    collate = lambda mode, group: collate_packed(group) if mode == "packed" else collate_padded(group, pad_id)
    for mode, r in runs.items():  # warm-up (kernels, allocator), no optimizer step
        r["model"](**to_device(collate(mode, r["groups"][0]), device)).loss.backward()
        r["model"].zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    for step in range(max(len(r["groups"]) for r in runs.values())):
        for mode, r in runs.items():
            if step >= len(r["groups"]):
                continue
            group = r["groups"][step]
            batch = to_device(collate(mode, group), device)  # a data worker's job: not timed
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            seconds, loss = timed(lambda: _train_step(r["model"], r["optimizer"], batch), device)
            r["seconds"] += seconds
            r["tokens"] += sum(len(e) for e in group)
            r["samples"] += len(group)
            r["flops"] += step_flops(r["sizes"], group)
            r["last_loss"] = float(loss)
            if on_cuda:  # what the step added: activations, gradients, temporaries
                r["step_memory"] = max(r["step_memory"], torch.cuda.max_memory_allocated(device) - before)
    return {mode: {"steps": len(r["groups"]), "tokens_per_s": r["tokens"] / r["seconds"], "seconds": r["seconds"],
                   "tokens_per_step": r["tokens"] / len(r["groups"]),
                   "samples_per_step": r["samples"] / len(r["groups"]),
                   "flops_per_s": r["flops"] / r["seconds"],
                   "peak_memory": resident_bytes(r["model"]) + r["step_memory"],
                   "last_loss": r["last_loss"]} for mode, r in runs.items()}


def resident_bytes(model) -> int:
    """Memory a model holds between steps when trained alone: weights and AdamW's two moments."""
    return sum(p.numel() * p.element_size() * (3 if p.requires_grad else 1) for p in model.parameters())


def _train_step(model, optimizer, batch) -> torch.Tensor:
    out = model(**batch)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach()


# ---- FLOPs and the GPU figures -----------------------------------------------------------------------


def flop_sizes(model) -> dict:
    """What `step_flops` needs of a model: matmul parameter counts and attention sizes."""
    llm, enc = model.llm.config, model.audio_encoder.encoder.config
    vis = model.vision_tower
    return dict(llm=_matmul_params(model.llm), llm_layers=llm.num_hidden_layers, llm_hidden=llm.hidden_size,
                audio=_matmul_params(model.audio_encoder), audio_layers=enc.encoder_layers, audio_hidden=enc.d_model,
                audio_proj=_matmul_params(model.audio_projector), stack=model.audio_stack,
                vision=_matmul_params(vis), vision_layers=vis.model.config.num_hidden_layers,
                vision_hidden=vis.hidden_size, vision_positions=vis.num_tokens + int(vis.has_cls),
                vision_proj=_matmul_params(model.vision_projector), image_tokens=vis.num_tokens)


def step_flops(z: dict, group: list[Example]) -> float:
    """Useful model FLOPs of one training step, real tokens only (padding is not useful work):
    LLM and projectors 6 x params x positions (forward + backward) plus causal attention
    6 x layers x hidden x length^2 per sample; frozen towers 2 x params x positions (forward)
    plus bidirectional attention 4 x layers x hidden x positions^2."""
    flops = sum(6 * z["llm"] * len(e) + 6 * z["llm_layers"] * z["llm_hidden"] * len(e) ** 2 for e in group)
    for clip in (c for e in group for c in e.audio):
        n = (clip.shape[1] - 1) // 2 + 1  # encoder positions
        flops += 2 * z["audio"] * n + 4 * z["audio_layers"] * z["audio_hidden"] * n**2
        flops += 6 * z["audio_proj"] * math.ceil(n / z["stack"])
    n_images = sum(len(e.images) for e in group)
    n = z["vision_positions"]
    flops += n_images * (2 * z["vision"] * n + 4 * z["vision_layers"] * z["vision_hidden"] * n**2)
    flops += n_images * 6 * z["vision_proj"] * z["image_tokens"]
    return float(flops)


def _matmul_params(module) -> int:
    """Parameters that multiply activations: all but looked-up tables (token embeddings unless tied
    to the output layer, positional embeddings). Approximate for convolutions."""
    tables = [m.weight for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    out = module.get_output_embeddings() if hasattr(module, "get_output_embeddings") else None
    tied = {id(out.weight)} if out is not None else set()
    return sum(p.numel() for p in module.parameters()) - sum(t.numel() for t in tables if id(t) not in tied)


def gpu_figures(trained: dict, peak: float | None) -> dict:
    """MFU (useful model FLOP/s over the card's peak bf16) and peak memory per mode, as if each
    model trained alone: its weights and optimizer state plus the most one of its steps added."""
    out = {"peak_flops": peak, "device_name": torch.cuda.get_device_name()}
    for mode, t in trained.items():
        out[f"{mode}_mfu"] = t["flops_per_s"] / peak if peak else None
        out[f"{mode}_peak_memory_gb"] = t["peak_memory"] / 2**30
        out[f"{mode}_model_tflops_per_s"] = t["flops_per_s"] / 1e12
    return out
