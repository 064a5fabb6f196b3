"""The two records that cross module boundaries: an encoded `Example` and a collated batch.

An `Example` is what `mmtune.data.encode` makes of one manifest row; collators
(`mmtune.collators`) turn `list[Example]` into a batch dict that `MultimodalLM.forward`
takes as keyword arguments.

Batch keys (tensors unless said otherwise):
    input_ids        (B, T) long      padded: B rows; packed: B == 1
    labels           (B, T) long      IGNORE_INDEX where not supervised; labels[t] is the
                                      target *for position t* (the model shifts by one)
    attention_mask   (B, T) long      padded batches only (1 = real token)
    position_ids     (B, T) long      packed: restart at 0 for every sample
    cu_seqlens       (N + 1,) int32   packed only: sample boundaries in the row
    max_seqlen       int              packed only: longest sample
    audio_features   (A, n_mels, F)   every clip of the batch, in order of appearance, padded
                                      with zeros to the longest clip F (mel frames)
    audio_lengths    (A,) long        real mel frames of each clip
    audio_owner      (A,) long        index of the sample (in the batch) each clip belongs to
    pixel_values     (I, 3, H, W)     every view (an image, or its overview and tiles) of the batch,
                                      in order of appearance
    image_owner      (I,) long        index of the sample each view belongs to
    sources          list[str]        "manifest.jsonl:LINE" of each sample, for error messages
Audio/image keys are absent when the batch has no clip/image. `to_device` moves a batch for the
model, leaving on the CPU the index tensors (HOST_KEYS) the model reads as Python ints.
"""

from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100  # label of a token that is not supervised
HOST_KEYS = ("audio_lengths", "audio_owner", "image_owner")  # read per item: on a GPU each read would sync


def to_device(batch: dict, device) -> dict:
    """A batch's tensors on `device`, but HOST_KEYS stay on the CPU; other values (sources) as they are."""
    return {k: v.to(device) if torch.is_tensor(v) and k not in HOST_KEYS else v for k, v in batch.items()}


@dataclass
class Example:
    input_ids: torch.Tensor  # (T,) long, placeholders already expanded to their token counts
    labels: torch.Tensor  # (T,) long, IGNORE_INDEX where not supervised
    audio: list[torch.Tensor] = field(default_factory=list)  # each (n_mels, n_frames) log-mel
    images: list[torch.Tensor] = field(default_factory=list)  # each (V, 3, H, W) views, normalized
    source: str = ""  # "manifest.jsonl:LINE"

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())
