"""Variable-length attention for packed rows, registered through transformers' AttentionInterface.

A packed batch is one row of N samples; `cu_seqlens` (N + 1,) marks where each starts. On CUDA
the kernel is PyTorch's FlashAttention (`torch.nn.attention.varlen.varlen_attn`), which never
looks at padding or across samples. On the CPU (tests, no FlashAttention) each segment runs
through SDPA on its own, which is the same computation. Without `cu_seqlens` (padded batches,
generation) the call is SDPA with the mask transformers built.
"""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "mmtune_varlen"


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query (1, H, T, Dh), key/value (1, H_kv, T, Dh) -> ((1, T, H, Dh), None), as transformers expects."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    causal = getattr(module, "is_causal", True)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (1, H, T, Dh) -> (T, H, Dh)
    if q.is_cuda:
        out = _flash_varlen(q, k, v, cu_seqlens.to(torch.int32), int(kwargs["max_length_q"]), scaling, causal)
    else:
        out = _segmentwise_sdpa(q, k, v, cu_seqlens, scaling, causal)
    return out.unsqueeze(0), None  # (T, H, Dh) -> (1, T, H, Dh)


def _flash_varlen(q, k, v, cu_seqlens, max_seqlen, scaling, causal):
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scaling,
                       window_size=(-1, 0) if causal else (-1, -1), enable_gqa=k.shape[1] != q.shape[1])


def _segmentwise_sdpa(q, k, v, cu_seqlens, scaling, causal):
    """(T, H, Dh) each -> (T, H, Dh): SDPA over every segment alone (the CPU stand-in for varlen)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        seg = [t[start:end].transpose(0, 1) for t in (q, k, v)]  # (H, L, Dh)
        o = F.scaled_dot_product_attention(*seg, is_causal=causal, scale=scaling,
                                           enable_gqa=seg[1].shape[0] != seg[0].shape[0])
        out[start:end] = o.transpose(0, 1)
    return out


def register_varlen_attention() -> str:
    """Register the kernel (idempotent) and return the name to pass as `attn_implementation`."""
    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
