"""Attention backend selection for the LLM and the towers.

`auto`: flash-attn's kernels when the package imports and the device is CUDA; otherwise
PyTorch's own varlen FlashAttention on CUDA (`torch.nn.attention.varlen`, torch >= 2.9);
SDPA on the CPU or with an older torch. The choice is logged once, by `build_model`.
"""

import importlib
import importlib.util
import logging

import torch

log = logging.getLogger("mmtune")

# names transformers understands for each mmtune choice
_TRANSFORMERS_NAME = {"flash_attention_2": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}


def flash_attn_available() -> bool:
    """flash-attn imports and a CUDA device is there (a wheel built for another torch fails here, not mid-run)."""
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("flash_attn")
    except Exception:  # ImportError, or OSError / RuntimeError from a wheel built against another torch
        return False
    return True


def torch_varlen_available() -> bool:
    """PyTorch ships `torch.nn.attention.varlen.varlen_attn` (torch >= 2.9)."""
    try:
        return importlib.util.find_spec("torch.nn.attention.varlen") is not None
    except ModuleNotFoundError:
        return False


def resolve_backend(requested: str, device: str | torch.device | None = None) -> str:
    """The backend to use: one of flash_attention_2, varlen, sdpa, eager."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if requested == "auto":
        if on_cuda and flash_attn_available():
            return "flash_attention_2"
        if on_cuda and torch_varlen_available():
            return "varlen"
        return "sdpa"
    if requested == "flash_attention_2" and not flash_attn_available():
        missing = "a CUDA device" if not torch.cuda.is_available() else "the flash-attn package (it does not import)"
        raise RuntimeError(f"attn_implementation: flash_attention_2 needs {missing}; install it with "
                           f"pip install 'mmtune[flash]' on a CUDA machine, or use auto to fall back to "
                           f"PyTorch's own kernels")
    if requested == "varlen" and on_cuda and not torch_varlen_available():
        raise RuntimeError(f"attn_implementation: varlen needs torch >= 2.9 on CUDA (torch.nn.attention.varlen), "
                           f"this is torch {torch.__version__}; upgrade torch or use auto / sdpa")
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
