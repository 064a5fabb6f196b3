"""Variable-length attention for packed rows, registered through transformers' AttentionInterface.

A packed batch is one row of N samples; `cu_seqlens` (N + 1,) marks where each starts. On CUDA
the kernel is PyTorch's FlashAttention (`torch.nn.attention.varlen.varlen_attn`), which never
looks at padding or across samples; it takes fp16/bf16 and head sizes that are multiples of 8.
On the CPU (tests, no FlashAttention), and on CUDA otherwise, each segment runs through SDPA on
its own, which is the same computation.
Without `cu_seqlens` (padded batches, generation) the call is SDPA with the mask transformers built.

No (T, T) mask is built for a packed row: transformers would make one from the restarting
position ids (1 GB of booleans at 32k tokens, 4 GB as floats), which this kernel never reads.
`varlen_mask` returns None for a single row without padding: a packed row always comes with
`cu_seqlens` (`MultimodalLM.forward`), and one plain row is causal, which SDPA does without a mask.
"""

import functools
import inspect

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
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_head_dim(q.shape[-1]):
        if dropout > 0.0:
            raise ValueError("the varlen FlashAttention kernel has no attention dropout: set the model's "
                             "attention_dropout to 0, or use attn_implementation: sdpa")
        cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32)
        q, k, v = (t.contiguous() for t in (q, k, v))
        out = _flash_varlen(q, k, v, cu_seqlens, int(kwargs["max_length_q"]), scaling, causal)
    else:
        out = _segmentwise_sdpa(q, k, v, cu_seqlens, scaling, causal, dropout)
    return out.unsqueeze(0), None  # (T, H, Dh) -> (1, T, H, Dh)


def _flash_head_dim(dim: int) -> bool:
    """FlashAttention takes head sizes that are multiples of 8, up to 256 (others: per-segment SDPA)."""
    return dim % 8 == 0 and dim <= 256


def _flash_varlen(q, k, v, cu_seqlens, max_seqlen, scaling, causal):
    """(T, H, Dh) each -> (T, H, Dh) through `varlen_attn`, whose keywords grew over torch releases:
    2.9 has `is_causal` only; later ones `scale` and `window_size`; 2.12 `enable_gqa`."""
    from torch.nn.attention.varlen import varlen_attn

    params = _parameters(varlen_attn)
    kwargs = {}
    if k.shape[1] != q.shape[1]:  # grouped-query attention: kv head j serves query heads j*g .. j*g + g - 1
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    if "scale" in params:
        kwargs["scale"] = scaling
    elif scaling is not None:  # the kernel's own scale is 1 / sqrt(Dh)
        q = q * (scaling * q.shape[-1] ** 0.5)
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        kwargs["is_causal"] = causal
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs)


@functools.lru_cache(maxsize=4)
def _parameters(fn) -> frozenset:
    return frozenset(inspect.signature(fn).parameters)


def _segmentwise_sdpa(q, k, v, cu_seqlens, scaling, causal, dropout=0.0):
    """(T, H, Dh) each -> (T, H, Dh): SDPA over every segment alone (the CPU stand-in for varlen).

    `split` and `cat` keep the backward pass to one concatenation per tensor (slicing would
    make a full-size zero gradient per segment). Key/value heads are repeated for grouped-query
    attention, as transformers' SDPA path does: the CPU's flash kernel takes no `enable_gqa`.
    Positions past cu_seqlens[-1] give zeros."""
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))  # (T, H_kv, Dh) -> (T, H, Dh)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    tail = q.shape[0] - sum(lengths)
    sizes = lengths + [tail] if tail else lengths
    outs = []
    for qs, ks, vs in zip(q.split(sizes), k.split(sizes), v.split(sizes)):
        qs, ks, vs = (t.transpose(0, 1)[None] for t in (qs, ks, vs))  # (L, H, Dh) -> (1, H, L, Dh): the CPU
        # flash kernel takes 4-D inputs only (3-D ones go to the slower math kernel)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal, scale=scaling, dropout_p=dropout)
        outs.append(o[0].transpose(0, 1))  # (1, H, L, Dh) -> (L, H, Dh)
    if tail:
        outs[-1] = torch.zeros_like(outs[-1])
    return torch.cat(outs)


def varlen_mask(batch_size: int, q_length: int, kv_length: int, attention_mask=None, **kwargs):
    """The mask transformers hands the kernel: none for one row without padding (see the module
    docstring), else SDPA's (padded batches, generation)."""
    if batch_size == 1 and attention_mask is None:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, attention_mask=attention_mask,
                     **kwargs)


def register_varlen_attention() -> str:
    """Register the kernel (idempotent) and return the name to pass as `attn_implementation`."""
    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME
