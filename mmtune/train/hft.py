"""Half Fine-Tuning (HFT; Hui et al. 2024, arXiv 2404.18466): a part with `train: hft` trains in full,
except that in each round half of every transformer layer's parameters are frozen, chosen anew each round.

The choice is the paper's "category level": inside each layer of the part (the longest `layers` list:
an LLM's decoder layers, a tower's encoder layers), the parameters fall into categories, and half of
each category's units (a unit: one module's own weight and bias) train:

    attention   each attention block of the layer (q, k, v, o: 2 of 4; Whisper's cross attention is
                a block of its own)
    norms       the layer's norm modules (1 of 2)
    FFN         the rest (gate, up, down: half the layers train 2 of 3, the other half 1; fc1, fc2: 1 of 2)

Everything outside the layers (embeddings, the output head, final norm, a tower's front end) trains
in every round, as the paper keeps embeddings and head trainable. Units are drawn at random from
(model.hft.seed, round, part), so a resumed run draws the same halves: the round is a function of the
step alone.

Round r of R holds the steps s with floor((s - 1) x R / steps) = r (R at most the run's steps); a resume
that changes the run's length (train.max_steps, train.epochs) moves the boundaries with it. The frozen half's gradients are dropped
after backward (`drop_frozen`), before clipping and the optimizer step, so AdamW skips those
parameters: no update, no weight decay, and their Adam moments kept as they are until a later round
trains them again. (The paper runs each round as a fine-tuning stage of its own and says nothing of
optimizer state; keeping the moments is mmtune's choice, so that a round change does not restart
Adam's bias correction mid-schedule.) The frozen half's gradients are still computed (and, with DDP,
reduced): HFT changes which weights move, not the step's cost.
"""

import logging
import random

from torch import nn

from mmtune.errors import ConfigError
from mmtune.train.fsdp import transformer_layers

log = logging.getLogger("mmtune")

HFT_PARTS = ("llm", "audio_encoder", "vision_tower")  # the bridge's parts that take `train: hft`


def categories(layer: nn.Module) -> dict[str, list[list[nn.Parameter]]]:
    """A layer's units by category: {"attn:self_attn": [[q.weight, q.bias], ...], "norm": ..., "ffn": ...}."""
    found: dict[str, list[list[nn.Parameter]]] = {}
    for name, module in layer.named_modules():
        params = [p for p in module.parameters(recurse=False)]
        if not params:
            continue
        top = name.split(".", 1)[0]
        if "norm" in type(module).__name__.lower():
            key = "norm"
        elif "attn" in top or "attention" in top:
            key = f"attn:{top}"
        else:
            key = "ffn"
        found.setdefault(key, []).append(params)
    return found


class HalfFineTuning:
    """The rounds and halves of the parts with `train: hft` (see the module docstring)."""

    def __init__(self, parts: dict[str, nn.Module], rounds: int, seed: int, steps: int):
        self.parts = {name: transformer_layers(module) for name, module in parts.items()}
        missing = [name for name, layers in self.parts.items() if layers is None]
        if missing:
            raise ConfigError(f"train: hft: the {', '.join(missing)} has no `layers` list of transformer layers to "
                              f"halve; train it full or lora")
        if rounds > steps:
            log.warning("model.hft.rounds %d is more than the run's %d steps: %d rounds of one step", rounds, steps,
                        steps)
        self.rounds, self.seed, self.steps = min(rounds, max(steps, 1)), seed, max(steps, 1)
        self.current: int | None = None
        self.frozen: list[nn.Parameter] = []

    @classmethod
    def of(cls, model, plans: dict[str, str | None], rounds: int, seed: int, steps: int) -> "HalfFineTuning | None":
        parts = {part: getattr(model, part) for part, plan in plans.items() if plan == "hft"}
        return cls(parts, rounds, seed, steps) if parts else None

    def round_of(self, step: int) -> int:
        """0-based round of optimizer step `step` (1-based)."""
        return min((step - 1) * self.rounds // self.steps, self.rounds - 1)

    def round_steps(self, r: int) -> tuple[int, int]:
        """(first, last) optimizer step of round `r`."""
        return -(-r * self.steps // self.rounds) + 1, -(-(r + 1) * self.steps // self.rounds)

    def choose(self, round_index: int) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(training, frozen) parameters of the layers in round `round_index`."""
        training, frozen = [], []
        for name, layers in self.parts.items():
            rng = random.Random(f"{self.seed}:{round_index}:{name}")
            per_layer = [categories(layer) for layer in layers]
            # a category of an odd unit count trains ceil(n/2) units in half the layers, floor in the others
            ceil_layers = {key: set(rng.sample(range(len(layers)), len(layers) // 2))
                           for key in sorted({k for c in per_layer for k in c})}
            for i, cats in enumerate(per_layer):
                for key in sorted(cats):
                    units = cats[key]
                    k = len(units) // 2 + (len(units) % 2 if i in ceil_layers[key] else 0)
                    chosen = set(rng.sample(range(len(units)), k))
                    for j, unit in enumerate(units):
                        (training if j in chosen else frozen).extend(unit)
        return training, frozen

    def drop_frozen(self, step: int) -> None:
        """Drop this round's frozen half's gradients (after backward, before clipping and the step)."""
        r = self.round_of(step)
        if r != self.current:
            training, self.frozen = self.choose(r)
            self.current = r
            first, last = self.round_steps(r)
            trained = sum(p.numel() for p in training)
            log.info("HFT round %d/%d (steps %d-%d): %s of %s layer values train in %s", r + 1, self.rounds, first,
                     last, f"{trained:,}", f"{trained + sum(p.numel() for p in self.frozen):,}",
                     ", ".join(self.parts))
        for p in self.frozen:
            p.grad = None
