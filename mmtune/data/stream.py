"""The order training sees batches in: a deterministic plan per epoch, and a position to resume from.

    stream = BatchStream(lengths, cfg.data, seed=0)
    indices = stream.next()          # example indices of the next micro-batch
    state = stream.state_dict()      # {"epoch": e, "index": i}; load_state_dict continues exactly there
"""

import numpy as np

from mmtune.config import DataConfig
from mmtune.data.sampler import length_grouped_batches, shuffled_batches, token_budget_batches


def token_budget(lengths, data: DataConfig) -> int:
    """Tokens per packed row: the configured budget, or about batch_size average samples."""
    if data.max_tokens_per_batch is not None:
        return data.max_tokens_per_batch
    return max(int(np.max(lengths)), int(data.batch_size * float(np.mean(lengths))))


def batch_budget(lengths, data: DataConfig) -> int | None:
    """The token budget every planned batch keeps: packed rows' size, the padded budget, or None."""
    if data.batching == "packed":
        return token_budget(lengths, data)
    return data.max_tokens_per_batch


def plan_epoch(lengths, data: DataConfig, seed: int) -> list[list[int]]:
    """Micro-batches of one epoch, every example exactly once (lengths: a list or an array)."""
    lengths = np.asarray(lengths).tolist()  # the planners index Python ints; this list lives for the call
    if data.batching == "packed":
        return token_budget_batches(lengths, token_budget(lengths, data), padded=False, shuffle=True, seed=seed)
    if data.max_tokens_per_batch is not None:
        return token_budget_batches(lengths, data.max_tokens_per_batch, padded=True, shuffle=True, seed=seed)
    if data.group_by_length:
        return length_grouped_batches(lengths, data.batch_size, seed)
    return shuffled_batches(len(lengths), data.batch_size, seed)


class BatchStream:
    def __init__(self, lengths, data: DataConfig, seed: int, start: dict | None = None):
        self.lengths, self.data, self.seed = lengths, data, seed
        self.load_state_dict(start or {"epoch": 0, "index": 0})

    def next(self) -> list[int]:
        if self.index >= len(self._plan):
            self.epoch, self.index = self.epoch + 1, 0
            self._plan = plan_epoch(self.lengths, self.data, self.seed + self.epoch)
        batch = self._plan[self.index]
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._plan = plan_epoch(self.lengths, self.data, self.seed + self.epoch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._plan)
