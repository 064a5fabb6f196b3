"""Attention backend selection for the LLM and the towers.

`auto`: flash-attn's kernels when the package imports and the device is CUDA; otherwise
PyTorch's own varlen FlashAttention on CUDA; SDPA on the CPU. The choice is logged once.
"""

import importlib.util
import logging

import torch

log = logging.getLogger("mmtune")

# names transformers understands for each mmtune choice
_TRANSFORMERS_NAME = {"flash_attention_2": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def resolve_backend(requested: str, device: str | torch.device | None = None) -> str:
    """The backend to use: one of flash_attention_2, varlen, sdpa, eager."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if requested == "auto":
        if on_cuda and flash_attn_available():
            return "flash_attention_2"
        if on_cuda:
            return "varlen"
        return "sdpa"
    if requested == "flash_attention_2" and not flash_attn_available():
        raise RuntimeError("attn_implementation: flash_attention_2 needs the flash-attn package and a CUDA "
                           "device (pip install 'mmtune[flash]'); use auto to fall back to PyTorch's kernels")
    return requested


def transformers_name(backend: str) -> str:
    """The `attn_implementation` string handed to transformers for a resolved backend."""
    if backend == "varlen":
        from mmtune.model.varlen import register_varlen_attention

        return register_varlen_attention()
    return _TRANSFORMERS_NAME[backend]


def uses_packing_kwargs(backend: str) -> bool:
    """Whether packed batches hand cu_seqlens/max_seqlen to the kernel (instead of a block mask)."""
    return backend in ("flash_attention_2", "varlen")
