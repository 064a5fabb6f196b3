"""Padding-free packed batches: all samples concatenated into ONE row, with sample boundaries.

The model reads `position_ids`/`cu_seqlens` so attention stays inside each sample. The first
label of every sample is IGNORE_INDEX: the model shifts labels by one (position t's logits
predict labels[t + 1]), so the last token of sample k must not predict sample k + 1's first token.

    batch = collate_packed([Example(torch.tensor([5, 6, 7]), torch.tensor([5, 6, 7])),
                            Example(torch.tensor([8, 9]), torch.tensor([-100, 9]))])
    batch["input_ids"]     # [[5, 6, 7, 8, 9]]
    batch["labels"]        # [[-100, 6, 7, -100, 9]]
    batch["position_ids"]  # [[0, 1, 2, 0, 1]]
    batch["cu_seqlens"]    # [0, 3, 5] (int32)
    batch["max_seqlen"]    # 3
"""

import torch

from mmtune.collators.padded import check_examples, collate_media
from mmtune.data.example import IGNORE_INDEX, Example


def collate_packed(examples: list[Example], pad_token_id: int = 0) -> dict:
    """Pack examples into one (1, T) row; see module docstring. No padding, so `pad_token_id`
    is unused: it is accepted so both collators are called the same way."""
    check_examples(examples)
    for e in examples:
        if len(e) == 0:
            raise ValueError(f"{e.source}: an example with no tokens cannot be packed")
    lengths = torch.tensor([len(e) for e in examples], dtype=torch.int32)  # (N,)
    labels = torch.cat([e.labels for e in examples]).long()  # (T,)
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0, dtype=torch.int32)])  # (N + 1,)
    labels[cu_seqlens[:-1].long()] = IGNORE_INDEX  # no label across a sample boundary
    batch = {
        "input_ids": torch.cat([e.input_ids for e in examples]).long()[None],  # (1, T)
        "labels": labels[None],  # (1, T)
        "position_ids": torch.cat([torch.arange(len(e)) for e in examples])[None],  # (1, T)
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(lengths.max()),
    }
    return batch | collate_media(examples) | {"sources": [e.source for e in examples]}
