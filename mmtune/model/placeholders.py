"""Placeholder tokens and how many LLM positions each media input takes.

These functions are the single source of the counts: the data step expands each placeholder
to this many tokens, and `MultimodalLM` checks the same numbers against what its towers emit.
"""

import math

AUDIO_TOKEN = "<|audio|>"
IMAGE_TOKEN = "<|image|>"
PLACEHOLDERS = {"audio": AUDIO_TOKEN, "image": IMAGE_TOKEN}


def whisper_encoder_frames(n_mel_frames: int) -> int:
    """Encoder positions for n mel frames: conv2 has stride 2 and padding 1 (3000 -> 1500)."""
    return (n_mel_frames - 1) // 2 + 1


def num_audio_tokens(n_mel_frames: int, stack: int = 1) -> int:
    """LLM positions one clip becomes: Whisper's stride-2 conv, then stacking `stack` frames."""
    if n_mel_frames <= 0:
        raise ValueError(f"an audio clip needs at least one mel frame, got {n_mel_frames}")
    return math.ceil(whisper_encoder_frames(n_mel_frames) / stack)


def num_image_tokens(image_size: int, patch_size: int) -> int:
    """LLM positions one image becomes: one per patch (CLIP's class token is dropped)."""
    return (image_size // patch_size) ** 2
