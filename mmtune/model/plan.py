"""What is trained, decided when the model is built: `frozen`, `lora`, `qlora`, `full` or `hft` per part
(`hft` builds as `full`; the training loop freezes half of each layer in turn: mmtune.train.hft).

LoRA goes through peft (`get_peft_model`), which wraps the base layers; nothing is patched.
`qlora` first turns the part's linear layers into 4-bit ones (`mmtune.model.quantize`) and
prepares it as peft recommends for k-bit training (everything frozen, half-precision norms
and embeddings in float32), then adds LoRA.
"""

import peft
from torch import nn

from mmtune.config import ConfigError, LoraConfig, QuantConfig
from mmtune.model.quantize import quantize_4bit


def apply_plan(module: nn.Module, plan: str, lora: LoraConfig, part: str = "model",
               quantization: QuantConfig | None = None) -> nn.Module:
    """Freeze, fully train, or (Q)LoRA-wrap `module` (`part` names it in errors); returns the module to
    use in its place."""
    module.requires_grad_(plan in ("full", "hft"))
    if plan not in ("lora", "qlora"):
        return module
    if plan == "qlora":
        quantize_4bit(module, quantization or QuantConfig())
        module = peft.prepare_model_for_kbit_training(module, use_gradient_checkpointing=False)
    if lora.target_modules != "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
        missing = [m for m in lora.target_modules if m not in names]
        if len(missing) == len(lora.target_modules):  # peft wraps the names it finds; none found is an error
            linear = sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(f"model.lora.target_modules: none of {', '.join(missing)} is in the {part} (its linear "
                              f"layers: {', '.join(linear)}); name some of those, or give all-linear")
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, use_dora=lora.use_dora, use_rslora=lora.use_rslora)
    return peft.get_peft_model(module, config)


def freeze(module: nn.Module | None, frozen: bool) -> None:
    if module is not None:
        module.requires_grad_(not frozen)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def describe_parameters(model: nn.Module) -> str:
    """`trainable: N / total: M (x%)`, the line users expect."""
    trainable, total = count_parameters(model)
    return f"trainable: {trainable:,} / total: {total:,} ({100 * trainable / max(total, 1):.2f}%)"
