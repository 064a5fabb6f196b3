"""Audio: decode to 16 kHz mono (io), Whisper log-mel on torch (features), training augmentation (augment).

`load_audio` and `log_mel_spectrogram` are imported on first use, so the encoder wrapper
(`mmtune.audio.encoder`) imports without the audio I/O libraries (soundfile, librosa, soxr).
"""

__all__ = ["load_audio", "log_mel_spectrogram"]


def __getattr__(name: str):
    if name == "load_audio":
        from mmtune.audio.io import load_audio

        return load_audio
    if name == "log_mel_spectrogram":
        from mmtune.audio.features import log_mel_spectrogram

        return log_mel_spectrogram
    raise AttributeError(f"module 'mmtune.audio' has no attribute {name!r}")
