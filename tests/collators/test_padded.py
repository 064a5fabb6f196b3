import pytest
import torch

from mmtune.collators import collate_padded
from mmtune.data.example import IGNORE_INDEX, Example

I = IGNORE_INDEX


def ex(ids, labels, audio=(), images=(), source="m.jsonl:1"):
    return Example(torch.tensor(ids), torch.tensor(labels), list(audio), list(images), source)


def test_text_only_batch_is_right_padded():
    batch = collate_padded([ex([5, 6, 7], [I, 6, 7], source="m.jsonl:1"), ex([8], [8], source="m.jsonl:2")], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[I, 6, 7], [8, I, I]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["sources"] == ["m.jsonl:1", "m.jsonl:2"]
    assert set(batch) == {"input_ids", "labels", "attention_mask", "sources"}


def test_pad_token_id_is_used():
    batch = collate_padded([ex([1], [1]), ex([2, 3], [2, 3])], pad_token_id=99)
    assert batch["input_ids"].tolist() == [[1, 99], [2, 3]]


def test_audio_clips_zero_padded_with_lengths_and_owners():
    a0, a1, a2 = torch.full((4, 2), 1.0), torch.full((4, 5), 2.0), torch.full((4, 3), 3.0)
    batch = collate_padded([ex([1], [1], audio=[a0, a1]), ex([2], [2]), ex([3], [3], audio=[a2])], pad_token_id=0)
    features = batch["audio_features"]
    assert features.shape == (3, 4, 5)  # (A, n_mels, F_max)
    assert torch.equal(features[0, :, :2], a0) and features[0, :, 2:].abs().sum() == 0
    assert torch.equal(features[1], a1)
    assert torch.equal(features[2, :, :3], a2) and features[2, :, 3:].abs().sum() == 0
    assert batch["audio_lengths"].tolist() == [2, 5, 3]
    assert batch["audio_owner"].tolist() == [0, 0, 2]
    assert "pixel_values" not in batch and "image_owner" not in batch


def test_images_stacked_in_order_with_owners():
    i0, i1, i2 = (torch.full((3, 2, 2), float(k)) for k in range(3))
    batch = collate_padded([ex([1], [1], images=[i0]), ex([2], [2], images=[i1, i2])], pad_token_id=0)
    assert batch["pixel_values"].shape == (3, 3, 2, 2)
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert batch["image_owner"].tolist() == [0, 1, 1]
    assert "audio_features" not in batch


def test_mismatched_media_and_bad_examples_are_refused():
    with pytest.raises(ValueError, match="one n_mels per batch"):
        collate_padded([ex([1], [1], audio=[torch.zeros(80, 2)]), ex([2], [2], audio=[torch.zeros(128, 2)])], 0)
    with pytest.raises(ValueError, match=r"share one \(3, H, W\) size"):
        collate_padded([ex([1], [1], images=[torch.zeros(3, 2, 2)]), ex([2], [2], images=[torch.zeros(3, 4, 4)])], 0)
    with pytest.raises(ValueError, match=r"m.jsonl:7: input_ids \(2,\) and labels \(1,\) must both be \(T,\)"):
        collate_padded([ex([1, 2], [1], source="m.jsonl:7")], 0)
    with pytest.raises(ValueError, match="empty list"):
        collate_padded([], 0)
