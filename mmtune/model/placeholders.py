"""Placeholder tokens and how many LLM positions each media input takes.

These functions are the single source of the counts: the data step expands each placeholder
to this many tokens, and `MultimodalLM` checks the same numbers against what its towers emit.
"""

import math

from mmtune.audio.features import FRAMES_PER_SECOND, MAX_FRAMES
from mmtune.config import ConfigError

AUDIO_TOKEN = "<|audio|>"
IMAGE_TOKEN = "<|image|>"
PLACEHOLDERS = {"audio": AUDIO_TOKEN, "image": IMAGE_TOKEN}


def whisper_encoder_frames(n_mel_frames: int) -> int:
    """Encoder positions for n mel frames: conv2 has stride 2 and padding 1 (3000 -> 1500)."""
    return (n_mel_frames - 1) // 2 + 1


def audio_windows(n_mel_frames: int, window: int = MAX_FRAMES) -> list[int]:
    """Mel frames of each window a clip is cut into: full windows, then the rest (75 s -> 3000, 3000, 1500)."""
    if n_mel_frames <= 0:
        raise ValueError(f"an audio clip needs at least one mel frame, got {n_mel_frames}")
    full, rest = divmod(n_mel_frames, window)
    return [window] * full + ([rest] if rest else [])


def num_audio_tokens(n_mel_frames: int, stack: int = 1, window: int = MAX_FRAMES) -> int:
    """LLM positions one clip becomes: each window through Whisper's stride-2 conv, then stacking
    `stack` frames, the windows' tokens joined (in closed form: an index sums this over millions of rows)."""
    if n_mel_frames <= 0:
        raise ValueError(f"an audio clip needs at least one mel frame, got {n_mel_frames}")
    full, rest = divmod(n_mel_frames, window)
    per_window = math.ceil(whisper_encoder_frames(window) / stack)
    return full * per_window + (math.ceil(whisper_encoder_frames(rest) / stack) if rest else 0)


def num_image_tokens(image_size: int, patch_size: int) -> int:
    """LLM positions one image becomes: one per patch (CLIP's class token is dropped)."""
    return (image_size // patch_size) ** 2


def window_frames(window_seconds: float, max_source_positions: int) -> int:
    """Mel frames per audio window: `window_seconds` at 100 frames/s, at most what the encoder's
    positional table covers (2 mel frames per position: 1500 -> 3000 frames, 30 s)."""
    frames = round(float(window_seconds) * FRAMES_PER_SECOND)
    if frames > 2 * max_source_positions:
        raise ConfigError(f"model.audio.window_seconds: {window_seconds} s is longer than the encoder takes "
                          f"({2 * max_source_positions / FRAMES_PER_SECOND:g} s); give at most that")
    return max(frames, 1)
