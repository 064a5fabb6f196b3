"""The best evaluation of a run so far, and early stopping on it.

    best = Best("wer", patience=3)
    best.update(step=1000, metrics={"wer": 0.08})   # True: better than anything before (or the first)
    best.update(step=2000, metrics={"wer": 0.09})   # False; best.waited == 1
    best.exhausted                                   # True once `patience` evaluations in a row did not improve

Its state is saved in every checkpoint's trainer_state.json, so a resumed run knows which
checkpoint is best and how long it has waited.
"""

import math
from dataclasses import asdict, dataclass

from mmtune.config import LOWER_IS_BETTER


@dataclass
class Best:
    metric: str
    patience: int | None = None  # evaluations without improvement before the run stops; None: never
    value: float | None = None
    step: int | None = None
    checkpoint: str | None = None  # folder name (checkpoint-N) holding the best weights
    waited: int = 0  # evaluations since the last improvement

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER

    def better(self, value: float) -> bool:
        """Strictly better than the best so far (the first finite value always is); equal is not better."""
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value < self.value if self.lower_is_better else value > self.value

    def update(self, step: int, metrics: dict) -> bool:
        value = metrics.get(self.metric)
        if value is None:
            raise KeyError(f"train.best_metric {self.metric!r} is missing from the evaluation ({sorted(metrics)})")
        if self.better(value):
            self.value, self.step, self.waited = float(value), step, 0
            return True
        self.waited += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.waited >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict | None) -> bool:
        """Continue from a checkpoint's state; False (nothing loaded) when it tracked another metric or none."""
        if not state or state.get("metric") != self.metric:
            return False
        self.value, self.step, self.checkpoint, self.waited = (state["value"], state["step"], state["checkpoint"],
                                                               state["waited"])
        return True
