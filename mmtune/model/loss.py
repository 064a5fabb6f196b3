"""Next-token cross entropy over the supervised positions only, never (positions x vocabulary) at once.

The plain loss computes float32 logits for every position: one 32k-token packed row with Qwen2.5's
152k-token vocabulary is 19.5 GB of logits, and as much again for their gradient. Here the LLM's
decoder gives hidden states (B, T, D); only the positions whose next token is supervised are kept
(N, D); the output head runs on CHUNK_ELEMENTS // V of them at a time, each chunk under activation
checkpointing, so forward and backward hold one chunk's logits (chunk, V) at a time. The sum over
chunks equals the plain loss (fp32: to rounding), and so do the gradients.

Models whose logits are not `lm_head(last hidden state)` (final logit soft-capping, a logit scale)
take `logits_to_keep`: the LLM's own forward computes logits at the supervised positions only
(N, V), unchunked but never for the unsupervised ones.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmtune.data.example import IGNORE_INDEX

CHUNK_ELEMENTS = 2**25  # logits per chunk: 32 Mi floats = 128 MiB fp32, 220 positions at a 152k vocabulary
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def supervised_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (B, T) -> (which positions predict a supervised token (B, T) bool, their targets (N,)).

    Position t's logits predict labels[t + 1], so the last position of a row predicts nothing."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep, labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]


def head_is_plain(llm: nn.Module) -> bool:
    """Whether the LLM's logits are its output head applied to its decoder's last hidden state."""
    config = llm.config
    transformed = any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)
    return not transformed and llm.get_output_embeddings() is not None


def chunked_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module,
                 chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Summed cross entropy of hidden (N, D) through `head` (D -> V) against targets (N,), chunk by chunk."""
    vocab = head.out_features  # not head.weight's shape: DeepSpeed ZeRO-3 keeps only a shard there
    size = max(1, chunk_elements // vocab)  # positions per chunk
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, y in zip(hidden.split(size), targets.split(size)):
        total = total + checkpoint(_chunk_loss, h, y, head, use_reentrant=False)
    return total


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """(n, D), (n,) -> summed cross entropy; the (n, V) logits live only inside this call."""
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def full_logits_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The plain loss, for reference: logits (B, T, V) at t predict labels (B, T) at t + 1."""
    shift_logits = logits[:, :-1].flatten(0, 1).float()  # (B*(T-1), V)
    shift_labels = labels[:, 1:].flatten()  # (B*(T-1),)
    loss_sum = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, int((shift_labels != IGNORE_INDEX).sum())
