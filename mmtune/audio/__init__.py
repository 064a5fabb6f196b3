"""Audio: decode to 16 kHz mono (io), Whisper log-mel on torch (features), training augmentation (augment)."""

from mmtune.audio.features import log_mel_spectrogram
from mmtune.audio.io import load_audio

__all__ = ["load_audio", "log_mel_spectrogram"]
