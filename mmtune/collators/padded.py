"""Padded batches: every sample in its own row, right-padded to the longest; media gathered per batch.

    batch = collate_padded([Example(torch.tensor([5, 6, 7]), torch.tensor([-100, 6, 7])),
                            Example(torch.tensor([8]), torch.tensor([8]))], pad_token_id=0)
    batch["input_ids"]       # [[5, 6, 7], [8, 0, 0]]
    batch["labels"]          # [[-100, 6, 7], [8, -100, -100]]
    batch["attention_mask"]  # [[1, 1, 1], [1, 0, 0]]
"""

import torch

from mmtune.data.example import IGNORE_INDEX, Example


def collate_padded(examples: list[Example], pad_token_id: int) -> dict:
    """Right-pad `input_ids` with pad_token_id and `labels` with IGNORE_INDEX; see module docstring."""
    check_examples(examples)
    T = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), T), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), T), dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        input_ids[i, : len(e)] = e.input_ids
        labels[i, : len(e)] = e.labels
        attention_mask[i, : len(e)] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    return batch | collate_media(examples) | {"sources": [e.source for e in examples]}


def collate_media(examples: list[Example]) -> dict:
    """Every clip and image of the batch in order of appearance, with the index of its sample.

    Clips (n_mels, F_k) are zero-padded to the longest F:
        audio_features (A, n_mels, F), audio_lengths (A,), audio_owner (A,)
    Images (V, 3, H, W) (V views: 1, or tiles + overview; a (3, H, W) image is one view) must share
    one H, W; every view is one tower input:
        pixel_values (sum V, 3, H, W), image_owner (sum V,)
    Keys are absent when the batch has no clip / no image.

        collate_media([Example(ids, labels, audio=[torch.ones(80, 3)]),
                       Example(ids, labels, audio=[torch.ones(80, 5)])])["audio_lengths"]  # [3, 5]
    """
    return _collate_audio(examples) | _collate_images(examples)


def _collate_audio(examples: list[Example]) -> dict:
    clips = [(i, clip) for i, e in enumerate(examples) for clip in e.audio]
    if not clips:
        return {}
    mels = {clip.shape[0] for _, clip in clips}
    if len(mels) != 1 or any(clip.dim() != 2 for _, clip in clips):
        shapes = [f"{examples[i].source}: {tuple(clip.shape)}" for i, clip in clips]
        raise ValueError(f"audio clips must be (n_mels, frames) with one n_mels per batch, got {shapes}")
    F = max(clip.shape[1] for _, clip in clips)
    features = clips[0][1].new_zeros((len(clips), mels.pop(), F))  # (A, n_mels, F)
    for a, (_, clip) in enumerate(clips):
        features[a, :, : clip.shape[1]] = clip
    lengths = torch.tensor([clip.shape[1] for _, clip in clips], dtype=torch.long)  # (A,)
    owner = torch.tensor([i for i, _ in clips], dtype=torch.long)  # (A,)
    return {"audio_features": features, "audio_lengths": lengths, "audio_owner": owner}


def _collate_images(examples: list[Example]) -> dict:
    images = [(i, image.reshape(-1, *image.shape[-3:])) for i, e in enumerate(examples) for image in e.images]
    if not images:
        return {}
    if len({tuple(image.shape[1:]) for _, image in images}) != 1:
        shapes = [f"{examples[i].source}: {tuple(image.shape)}" for i, image in images]
        raise ValueError(f"images of one batch must share one (3, H, W) size; preprocess resizes them, got {shapes}")
    pixel_values = torch.cat([image for _, image in images])  # (sum V, 3, H, W)
    owner = torch.tensor([i for i, image in images for _ in range(image.shape[0])], dtype=torch.long)  # (sum V,)
    return {"pixel_values": pixel_values, "image_owner": owner}


def check_examples(examples: list[Example]) -> None:
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    for e in examples:
        if e.input_ids.shape != e.labels.shape or e.input_ids.dim() != 1:
            raise ValueError(f"{e.source}: input_ids {tuple(e.input_ids.shape)} and labels "
                             f"{tuple(e.labels.shape)} must both be (T,)")
