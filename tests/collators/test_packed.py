import pytest
import torch

from mmtune.collators import collate_packed, collate_padded
from mmtune.data.example import IGNORE_INDEX, Example

I = IGNORE_INDEX


def ex(ids, labels, audio=(), images=(), source="m.jsonl:1"):
    return Example(torch.tensor(ids), torch.tensor(labels), list(audio), list(images), source)


def test_one_row_with_restarting_positions_and_boundaries():
    examples = [ex([5, 6, 7], [5, 6, 7], source="a:1"), ex([8, 9], [I, 9], source="a:2"), ex([4, 3, 2, 1], [I, I, 2, 1], source="a:3")]
    batch = collate_packed(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 4, 3, 2, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 5, 9] and batch["cu_seqlens"].dtype == torch.int32
    assert batch["max_seqlen"] == 4 and isinstance(batch["max_seqlen"], int)
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["position_ids"].dtype == torch.long
    assert batch["sources"] == ["a:1", "a:2", "a:3"]
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen", "sources"}


def test_first_label_of_each_example_is_ignored_and_the_rest_kept():
    examples = [ex([5, 6, 7], [5, 6, 7]), ex([8, 9], [8, 9]), ex([1, 2, 3], [I, 2, I])]
    labels = collate_packed(examples)["labels"][0]
    assert labels.tolist() == [I, 6, 7, I, 9, I, 2, I]
    for e, start, end in zip(examples, [0, 3, 5], [3, 5, 8]):
        assert labels[start] == I
        assert torch.equal(labels[start + 1 : end], e.labels[1:])
    assert examples[0].labels.tolist() == [5, 6, 7]  # inputs are not modified


def test_shifted_targets_match_the_padded_batch():
    """Next-token targets (labels[1:]) of the packed row equal the padded ones, sample by sample."""
    examples = [ex([5, 6, 7], [5, 6, 7]), ex([8, 9], [I, 9])]
    packed = collate_packed(examples)["labels"][0]
    padded = collate_padded(examples, pad_token_id=0)["labels"]
    targets = [t for row in padded for t in row[1:].tolist() if t != I]
    packed_targets = [t for t in packed[1:].tolist() if t != I]
    assert packed_targets == targets == [6, 7, 9]


def test_media_keys_equal_the_padded_collator():
    audio = [torch.randn(4, 3), torch.randn(4, 6)]
    image = torch.randn(3, 2, 2)
    examples = [ex([1, 2], [1, 2], audio=audio[:1]), ex([3], [3], images=[image]), ex([4], [4], audio=audio[1:])]
    packed, padded = collate_packed(examples), collate_padded(examples, pad_token_id=0)
    for key in ("audio_features", "audio_lengths", "audio_owner", "pixel_values", "image_owner"):
        assert torch.equal(packed[key], padded[key]), key
    assert packed["audio_owner"].tolist() == [0, 2] and packed["image_owner"].tolist() == [1]
    assert packed["audio_lengths"].tolist() == [3, 6]


def test_empty_example_is_refused():
    with pytest.raises(ValueError, match="m.jsonl:3: an example with no tokens cannot be packed"):
        collate_packed([ex([1], [1]), ex([], [], source="m.jsonl:3")])
