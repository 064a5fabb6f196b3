"""Batches made in DataLoader worker processes: rows decoded, augmented, encoded and collated per draw.

    sampler = PlanSampler(dataset.lengths, cfg.data, seed=0, start={"epoch": 0, "index": 0})
    for item in draw_batches(Draws(dataset, collate, pad_id, budget), sampler, cfg.data):
        item["batch"]   # the collated batch (None when every row of it was skipped)
        item["after"]   # the plan's position after it: what a checkpoint saves to resume exactly

The main process only plans (from the index's lengths) and holds the batches in flight:
`num_workers x prefetch` of them. A worker keeps no state that a draw depends on (the encoder's
draws derive from seed, epoch and row), so resume and the number of workers never change a batch.
Under DDP process r takes every r-th batch of one global plan.

Bad input: a row that fails is named (`on_bad_sample: error` stops the run with its file and row)
or counted (`skip`); a row whose decoded length exceeds its indexed length is counted and, if the
batch then breaks its token budget, left out of that batch (never an over-budget batch); a worker
that dies is an error naming the row it was on.
"""

import logging
import multiprocessing
import os
import re
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from mmtune.config import DataConfig
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import one_thread
from mmtune.data.index import quiet_tokenizers_in_forks
from mmtune.errors import DataError
from mmtune.data.stream import BatchStream

log = logging.getLogger("mmtune")
WARN_ROWS = 20  # rows named in the log for each kind of draw-time problem; all are counted

@dataclass(frozen=True)
class BatchKey:
    epoch: int
    rows: tuple  # sample numbers of this batch
    after: dict | None = None  # plan position after this batch (and the other processes' of its round)


class PlanSampler:
    """BatchKeys of process `rank` of `world`, from plan position `start` on, without end."""

    def __init__(self, lengths, data: DataConfig, seed: int, start: dict | None = None, rank: int = 0,
                 world: int = 1, shards=None):
        self.lengths, self.data, self.seed, self.shards = lengths, data, seed, shards
        self.start, self.rank, self.world = start or {"epoch": 0, "index": 0}, rank, world

    def __iter__(self):
        stream = BatchStream(self.lengths, self.data, self.seed, self.start, self.shards)
        while True:
            for _ in range(self.rank):
                stream.next()
            rows = stream.next()
            epoch = stream.epoch
            for _ in range(self.world - self.rank - 1):
                stream.next()
            yield BatchKey(epoch, tuple(rows), stream.state_dict())


@dataclass
class DrawLog:
    """What the draws met: rows skipped when decoded, rows longer than indexed, rows left out of a batch."""

    skipped: dict = field(default_factory=dict)  # sample -> (source, reason): once, however often drawn
    longer: set = field(default_factory=set)
    dropped: int = 0  # row draws left out of their batch to keep its token budget

    def add(self, item: dict) -> None:
        for k, source, reason in item["skipped"]:
            if k not in self.skipped and len(self.skipped) < WARN_ROWS:
                log.warning("skipped %s: %s", source, reason)
            self.skipped.setdefault(k, (source, reason))
        for source in item["longer"]:
            if source not in self.longer and len(self.longer) < WARN_ROWS:
                log.warning("%s decodes longer than its header said; counted (rebuild the index: delete "
                            ".mmtune_index beside the data)", source)
            self.longer.add(source)
        self.dropped += len(item["dropped"])

    def stats(self) -> dict:
        return {"skipped_when_drawn": len(self.skipped), "longer_than_indexed": len(self.longer),
                "dropped_for_budget": self.dropped}


def fits(lengths: list[int], budget: int | None, padded: bool) -> bool:
    """Whether a batch of these lengths keeps the token budget (None: no budget)."""
    if budget is None or not lengths:
        return True
    return max(lengths) * len(lengths) <= budget if padded else sum(lengths) <= budget


class Draws(Dataset):
    """BatchKey -> {"batch", "skipped", "longer", "dropped", "error", "after"}, made in a worker.

    mode "example": `dataset.example` (augmented when the dataset trains); "prompt": generation prompts.
    collate None: the batch is the list of Examples.
    Errors travel back as (source, reason) ("skipped": (sample, source, reason)): the main process raises
    or counts them.
    """

    def __init__(self, dataset: MultimodalDataset, collate, pad_token_id: int, budget: int | None = None,
                 padded: bool = True, mode: str = "example", on_bad: str = "error", workers: int = 0):
        self.dataset, self.collate, self.pad_token_id = dataset, collate, pad_token_id
        self.budget, self.padded, self.mode, self.on_bad = budget, padded, mode, on_bad
        self.slots = multiprocessing.Array("q", 2 * max(workers, 1), lock=False)  # (pid, sample) per worker

    def __getitem__(self, key: BatchKey) -> dict:
        out = {"batch": None, "skipped": [], "longer": [], "dropped": [], "error": None, "after": key.after,
               "rows": key.rows}
        pairs = []  # (sample number, Example)
        with one_thread():  # a no-op in a worker (already one thread); in the main process, as fast and fair
            for k in key.rows:
                self._mark(k)
                try:
                    example = self.dataset.example(k, key.epoch) if self.mode == "example" else self.dataset.prompt(k)
                except DataError as e:
                    if self.on_bad == "error":
                        out["error"] = (e.source, e.reason)
                        return out
                    out["skipped"].append((k, e.source, e.reason))
                    continue
                pairs.append((k, example))
        examples = self._keep_budget(pairs, out)
        if examples:
            out["batch"] = self.collate(examples, self.pad_token_id) if self.collate else examples
        return out

    def _keep_budget(self, pairs: list, out: dict) -> list:
        """Count rows longer than indexed; drop them, longest first, while the batch breaks its budget."""
        longer = sorted((e for k, e in pairs if len(e) > int(self.dataset.lengths[k])), key=len)
        out["longer"] = [e.source for e in longer]
        examples = [e for _, e in pairs]
        while longer and not fits([len(e) for e in examples], self.budget, self.padded):
            drop = longer.pop()
            examples = [e for e in examples if e is not drop]
            out["dropped"].append(drop.source)
        return examples

    def _mark(self, k: int) -> None:
        info = get_worker_info()
        slot = 0 if info is None else info.id
        self.slots[2 * slot], self.slots[2 * slot + 1] = os.getpid(), k

    def row_of(self, pid: int) -> int | None:
        for slot in range(len(self.slots) // 2):
            if self.slots[2 * slot] == pid:
                return int(self.slots[2 * slot + 1])
        return None


def _as_is(item):
    return item


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # per-clip feature work is many small ops; one thread per worker


def draw_batches(draws: Draws, keys, data: DataConfig):
    """Iterate the drawn items of `keys` (a sampler or a list), prepared by data.num_workers processes
    (which sets TOKENIZERS_PARALLELISM=false if unset: `quiet_tokenizers_in_forks`)."""
    if data.num_workers > 0:
        quiet_tokenizers_in_forks()
    # a generator of its own: the loader's worker base seed is then not drawn from torch's global RNG, whose
    # state (dropout) a resumed run restores and must not see consumed by a loader started at another step
    loader = DataLoader(draws, batch_size=None, sampler=keys, num_workers=data.num_workers, collate_fn=_as_is,
                        prefetch_factor=data.prefetch if data.num_workers else None, worker_init_fn=_worker_init,
                        generator=torch.Generator().manual_seed(0))
    items = iter(loader)
    try:
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except (RuntimeError, OSError, EOFError) as e:  # OSError/EOFError: a dead worker's half-sent batch
                raise worker_error(draws, e) from None
            if item["error"] is not None:
                raise DataError(*item["error"])
            yield item
    finally:
        # the workers stop now, not when the iterator is collected: an error's traceback keeps it alive, and
        # while it lives torch's SIGCHLD handler raises on the death of any of its workers, wherever the
        # main thread is by then (torch's own __del__ calls the same method)
        shutdown = getattr(items, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def encode_all(dataset: MultimodalDataset, epoch: int = 0) -> tuple[list, DrawLog]:
    """Every sample encoded now, in order, through the same draws as training (the eager way: every
    decoded example in memory; for tests, evaluation of small sets, and the bench's baseline)."""
    data = dataset.encoder.data
    draws = Draws(dataset, None, 0, on_bad=data.on_bad_sample, workers=data.num_workers)
    examples, drawn = [], DrawLog()
    for item in draw_batches(draws, [BatchKey(epoch, (k,)) for k in range(len(dataset))], data):
        examples += item["batch"] or []
        drawn.add(item)
    return examples, drawn


def worker_error(draws: Draws, error: Exception) -> Exception:
    """The error naming the row a dead worker was on, or `error` itself when no worker died.

    torch's SIGCHLD handler raises its RuntimeError wherever the main thread is when a worker dies,
    not only inside `next()`; so the training loop passes what it catches through this too."""
    # torch says "DataLoader worker (pid(s) 123, 456) exited unexpectedly" or "... (pid 123) is killed by signal"
    match = re.search(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\)", str(error))
    pids = [int(p) for p in re.findall(r"\d+", match.group(1))] if match else _dead_workers(draws)
    if not pids:
        return error
    for pid in pids:
        k = draws.row_of(pid)
        if k is not None:
            return DataError(draws.dataset.label(k), f"a data worker (pid {pid}) died while encoding this row "
                                                     f"({error}); check the row's media with `mmtune data check`, "
                                                     f"or drop the row")
    return DataError("data worker", f"{error}; run `mmtune data check` on the data")


def _dead_workers(draws: Draws) -> list[int]:
    """Pids of the workers in `draws.slots` that have exited (gone, or a zombie not yet reaped); Linux /proc."""
    dead = []
    for slot in range(len(draws.slots) // 2):
        pid = int(draws.slots[2 * slot])
        if pid <= 0 or pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    dead.append(pid)
        except OSError:
            dead.append(pid)
    return dead
