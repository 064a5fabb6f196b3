"""The order training sees batches in: a deterministic plan per epoch, and a position to resume from.

    stream = BatchStream(lengths, cfg.data, seed=0)
    indices = stream.next()          # example indices of the next micro-batch
    state = stream.state_dict()      # {"epoch": e, "index": i}; load_state_dict continues exactly there
"""

import numpy as np

from mmtune.config import ConfigError, DataConfig
from mmtune.data.sampler import length_grouped_batches, shuffled_batches, token_budget_batches


def token_budget(lengths, data: DataConfig) -> int:
    """Tokens per packed row: the configured budget, or about batch_size average samples."""
    if data.max_tokens_per_batch is not None:
        return data.max_tokens_per_batch
    return max(int(np.max(lengths)), int(data.batch_size * float(np.mean(lengths))))


def check_budget(lengths, data: DataConfig) -> None:
    """data.max_tokens_per_batch holds the longest sample (a batch is at least one sample)."""
    budget = data.max_tokens_per_batch
    longest = int(np.max(lengths)) if len(lengths) else 0
    if budget is not None and longest > budget:
        raise ConfigError(f"data.max_tokens_per_batch: {budget} is below the longest sample's {longest} tokens; raise "
                          f"it to at least {longest}, or lower data.max_length (longer rows are then dropped or cut)")


def batch_budget(lengths, data: DataConfig) -> int | None:
    """The token budget every planned batch keeps: packed rows' size, the padded budget, or None."""
    if data.batching == "packed":
        return token_budget(lengths, data)
    return data.max_tokens_per_batch


def plan_epoch(lengths, data: DataConfig, seed: int, shards=None) -> list[list[int]]:
    """Micro-batches of one epoch, every example exactly once (lengths: a list or an array).

    shards: (N,) shard number of each example (tar sources). The shards are then taken in a shuffled
    order, `data.shard_window` at a time, and each window's examples are batched among themselves
    (the window is the shuffle buffer): reads stay within a few shards at a time, in shard order.
    """
    if shards is None:
        return _plan(lengths, data, seed, batch_budget(lengths, data))
    lengths, shards = np.asarray(lengths), np.asarray(shards)
    budget = batch_budget(lengths, data)  # one budget for every window, the one the draws check
    order = np.random.default_rng([seed, 1]).permutation(np.unique(shards))
    batches = []
    for w in range(0, len(order), data.shard_window):
        members = np.flatnonzero(np.isin(shards, order[w: w + data.shard_window]))  # (n,) example numbers
        batches += [[int(members[i]) for i in b] for b in _plan(lengths[members], data, seed + w, budget)]
    return batches


def _plan(lengths, data: DataConfig, seed: int, budget: int | None) -> list[list[int]]:
    lengths = np.asarray(lengths).tolist()  # the planners index Python ints; this list lives for the call
    if data.batching == "packed":
        return token_budget_batches(lengths, budget, padded=False, shuffle=True, seed=seed)
    if data.max_tokens_per_batch is not None:
        return token_budget_batches(lengths, data.max_tokens_per_batch, padded=True, shuffle=True, seed=seed)
    if data.group_by_length:
        return length_grouped_batches(lengths, data.batch_size, seed)
    return shuffled_batches(len(lengths), data.batch_size, seed)


def epoch_sizes(lengths, data: DataConfig, seed: int, epochs: int, shards=None) -> list[int]:
    """Micro-batches in each of the first `epochs` epochs' plans (the plan, and so its size, is drawn per epoch)."""
    return [len(plan_epoch(lengths, data, seed + e, shards)) for e in range(epochs)]


def steps_for_epochs(sizes: list[int], epochs: float, per_step: int) -> int:
    """Optimizer steps in `epochs` passes: the micro-batches of the whole epochs and the fraction of the
    next one, `per_step` (grad_accum x processes) to a step, rounded down; at least 1.
        steps_for_epochs([10, 11, 10], 2.5, per_step=2)  # (10 + 11 + 5) // 2 == 13
    sizes: epoch_sizes(...) of at least ceil(epochs) epochs."""
    whole = int(epochs)
    batches = sum(sizes[:whole]) + (int((epochs - whole) * sizes[whole]) if epochs > whole else 0)
    return max(1, batches // per_step)


class BatchStream:
    def __init__(self, lengths, data: DataConfig, seed: int, start: dict | None = None, shards=None):
        self.lengths, self.data, self.seed, self.shards = lengths, data, seed, shards
        self.load_state_dict(start or {"epoch": 0, "index": 0})

    def next(self) -> list[int]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._set_plan()
        batch = self._rows[self._starts[self.index]: self._starts[self.index + 1]].tolist()
        self.index += 1
        return batch

    def _set_plan(self) -> None:
        """This epoch's plan kept as two arrays (rows in batch order, batch starts): 4 bytes a row
        rather than a Python int each, at a million rows too."""
        plan = plan_epoch(self.lengths, self.data, self.seed + self.epoch, self.shards)
        self._rows = np.fromiter((k for b in plan for k in b), dtype=np.int32)
        self._starts = np.cumsum([0] + [len(b) for b in plan])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._set_plan()

    @property
    def batches_per_epoch(self) -> int:
        return len(self._starts) - 1
