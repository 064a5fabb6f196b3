"""QLoRA's base weights: a part's linear layers in 4-bit NF4 through bitsandbytes, LoRA on top.

    quantize_4bit(llm, cfg.quantization)        # every nn.Linear but the output head -> bnb Linear4bit
    restore_4bit(model, tensors)                # a checkpoint's 4-bit weights back into a rebuilt model
    dequantize_tensors(tensors)                 # the same weights as float32, for a merge or an export

Each Linear4bit keeps its weight as packed uint8 (two 4-bit codes a byte) with one absmax per
block of 64 values (itself quantized to 8 bits under double quantization), so a base weight
costs about 0.53 bytes a parameter against 4 in float32. The quantization is deterministic: the
same weights quantize to the same codes, so a base rebuilt from its path (or from init_seed) is
the base that trained. A checkpoint stores what a part built from a config holds: the packed
codes and their quantization state, as bitsandbytes' own state-dict keys
(`...weight`, `...weight.absmax`, `...weight.quant_state.bitsandbytes__nf4`, ...).
"""

import torch
from torch import nn

from mmtune.config import QuantConfig
from mmtune.errors import MmtuneError

QUANT_STATE = ".quant_state.bitsandbytes__"  # key infix of the packed quantization state (then nf4 or fp4)
STATS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")  # weight.<stat> keys beside the codes
SKIP = ("lm_head",)  # output heads stay in full precision, as in QLoRA


def bitsandbytes():
    """The bitsandbytes module, or a one-line error naming the extra that installs it."""
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise MmtuneError(f"train: qlora needs bitsandbytes ({e}): pip install 'mmtune[qlora]' "
                          f"(or pip install bitsandbytes)") from None
    return bnb


def quantize_4bit(module: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Replace every nn.Linear inside `module` (not the output head) by a bnb Linear4bit holding its
    weight quantized; biases stay as they are. Returns `module`, changed in place."""
    bnb = bitsandbytes()
    compute = getattr(torch, cfg.compute_dtype)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or name in SKIP:
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute, compress_statistics=cfg.double_quant,
                                      quant_type=cfg.quant_type, device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type=cfg.quant_type,
                                             compress_statistics=cfg.double_quant)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            # On CPUs with AVX512-BF16, bitsandbytes repacks the weight for a bfloat16 kernel in eval mode,
            # which fails on small layers and makes evaluation less exact than training: keep one path.
            layer.support_avx512bf16_for_cpu = False
            setattr(parent, name, layer.to(child.weight.device))  # .to quantizes the weight
    return module


def _quantized_keys(tensors: dict) -> dict[str, str]:
    """{weight key: its quant-state key} for every 4-bit weight in a state dict."""
    return {k.split(QUANT_STATE)[0]: k for k in tensors if QUANT_STATE in k}


def _stats(tensors: dict, key: str, state_key: str) -> dict:
    stats = {f"{key}.{s}": tensors[f"{key}.{s}"] for s in STATS if f"{key}.{s}" in tensors}
    return stats | {state_key: tensors[state_key]}


def restore_4bit(model: nn.Module, tensors: dict) -> dict:
    """Put each 4-bit weight of `tensors` (codes and quantization state) into the rebuilt model's
    Linear4bit of that name; returns the other tensors, for load_state_dict."""
    quantized = _quantized_keys(tensors)
    if not quantized:
        return tensors
    bnb = bitsandbytes()
    modules = dict(model.named_modules())
    used = set()
    for key, state_key in quantized.items():
        layer = modules.get(key.rsplit(".", 1)[0])
        if not isinstance(layer, bnb.nn.Linear4bit):
            continue  # not a 4-bit layer here: load_state_dict reports the mismatch
        stats = _stats(tensors, key, state_key)
        layer.weight = bnb.nn.Params4bit.from_prequantized(tensors[key], stats, requires_grad=False,
                                                           device=layer.weight.device, module=layer)
        used |= {key} | set(stats)
    return {k: v for k, v in tensors.items() if k not in used}


def dequantize_tensors(tensors: dict) -> dict:
    """The state dict with every 4-bit weight dequantized to float32 (out, in) under its own key."""
    quantized = _quantized_keys(tensors)
    if not quantized:
        return tensors
    bnb = bitsandbytes()
    out = dict(tensors)
    for key, state_key in quantized.items():
        stats = _stats(tensors, key, state_key)
        state = bnb.functional.QuantState.from_dict(dict(stats), device=torch.device("cpu"))
        out[key] = bnb.functional.dequantize_4bit(tensors[key], state).to(torch.float32)
        for k in stats:
            out.pop(k)
    return out


def storage_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers a module holds (4-bit codes count as what they occupy)."""
    tensors = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    for m in module.modules():  # quantization states live beside the packed weights
        state = getattr(getattr(m, "weight", None), "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
    return total
