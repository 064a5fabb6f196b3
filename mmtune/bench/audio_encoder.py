"""Benchmark: Whisper encoding of short clips, 30 s-padded (stock) against real frames only.

    padded   every clip padded to 3000 mel frames (30 s) and run through transformers'
             `WhisperEncoder.forward`, as a stock pipeline does: 1500 positions per clip
    varlen   `AudioEncoder` on the real frames only (a 5 s clip: 250 positions); on CUDA the
             clips of a batch go through one varlen FlashAttention call, packed into one row
Both see the same clips in batches of `batch_size`; each timing is the best of `repeats` passes
over all clips after one warm-up pass, the two paths taking turns. `max_abs_diff` checks that
the varlen path is the stock encoder: the largest |difference| of their outputs for a 30 s clip.
"""

import copy

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from mmtune.audio.encoder import AudioEncoder
from mmtune.audio.features import FRAMES_PER_SECOND, MAX_FRAMES
from mmtune.bench.report import best_times, check_device, machine, torch_threads
from mmtune.model.varlen import register_varlen_attention


PRESETS = {
    "tiny": dict(d_model=256, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=1024),  # CPU, seconds
    "small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072),  # whisper-small
}


def run(num_clips=16, seconds=5.0, device="cpu", preset="tiny", batch_size=8, repeats=3, seed=0,
        threads=None) -> dict:
    """Time both paths on `num_clips` random log-mel clips of `seconds` each; returns figures as a dict.
    `threads`: CPU threads for torch during the run (None: torch's default)."""
    check_device(device)
    with torch_threads(threads):
        return _run(num_clips, seconds, device, preset, batch_size, repeats, seed)


def _run(num_clips, seconds, device, preset, batch_size, repeats, seed) -> dict:
    on_cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    stock = make_encoder(preset, seed).to(device=device, dtype=dtype)
    ours = copy.deepcopy(stock)
    ours.config._attn_implementation = register_varlen_attention() if on_cuda else "sdpa"  # CPU: batched SDPA
    audio = AudioEncoder(ours)
    frames = int(seconds * FRAMES_PER_SECOND)
    clips = torch.randn(num_clips, stock.config.num_mel_bins, frames, generator=torch.Generator().manual_seed(seed))
    times = best_times({"padded": lambda: _padded(stock, clips, batch_size, device, dtype),
                        "varlen": lambda: _varlen(audio, clips, batch_size, device, dtype)}, repeats, device)
    padded_s, varlen_s = times["padded"][0], times["varlen"][0]
    return {
        "padded_clips_per_s": num_clips / padded_s,
        "varlen_clips_per_s": num_clips / varlen_s,
        "speedup": padded_s / varlen_s,
        "max_abs_diff": thirty_second_diff(stock, audio, device, dtype, seed),
        "num_clips": num_clips, "seconds": seconds, "batch_size": batch_size,
        "attention": {"padded": "sdpa", "varlen": ours.config._attn_implementation},
        "device": str(device), "preset": preset, "dtype": str(dtype).removeprefix("torch."), **machine(),
    }


def make_encoder(preset: str, seed: int = 0) -> WhisperEncoder:
    """A randomly initialized Whisper encoder of the preset's size, in eval mode, with SDPA."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: use one of {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    config = WhisperConfig(**PRESETS[preset], num_mel_bins=80, max_source_positions=MAX_FRAMES // 2)
    encoder = WhisperEncoder(config).eval()
    encoder.config._attn_implementation = "sdpa"
    return encoder


@torch.no_grad()
def _padded(encoder, clips, batch_size, device, dtype) -> list[torch.Tensor]:
    """Stock: each batch padded with zeros to 3000 frames -> [(B, 1500, C)]."""
    out = []
    for batch in clips.split(batch_size):
        features = torch.nn.functional.pad(batch, (0, MAX_FRAMES - batch.shape[-1]))  # (B, n_mels, 3000)
        out.append(encoder(features.to(device=device, dtype=dtype)).last_hidden_state)
    return out


@torch.no_grad()
def _varlen(audio, clips, batch_size, device, dtype) -> list[torch.Tensor]:
    """Real frames only: (B, n_mels, F) with lengths -> [(B, ceil(F / 2), C)]."""
    out = []
    for batch in clips.split(batch_size):
        lengths = torch.full((batch.shape[0],), batch.shape[-1], dtype=torch.long)
        out.append(audio(batch.to(device=device, dtype=dtype), lengths)[0])
    return out


@torch.no_grad()
def thirty_second_diff(stock, audio, device, dtype, seed: int = 0) -> float:
    """Largest |AudioEncoder - stock encoder| over the output of one 30 s clip."""
    clip = torch.randn(1, stock.config.num_mel_bins, MAX_FRAMES, generator=torch.Generator().manual_seed(seed + 1))
    clip = clip.to(device=device, dtype=dtype)
    ours, _ = audio(clip, torch.tensor([MAX_FRAMES]))
    return float((ours.float() - stock(clip).last_hidden_state.float()).abs().max())
