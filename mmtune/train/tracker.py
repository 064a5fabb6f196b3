"""What a run records as it goes: metrics.jsonl (one JSON object a line) and TensorBoard.
The curves PNG (`train/curves.py`) and report.md / eval.json (`train/report.py`) are made from it.

    tracker = Tracker(cfg.train.output_dir, resume_step=state.step)
    tracker.log(step, loss=2.31, lr=1e-4, tokens_per_s=12_300)
    tracker.log_eval(step, {"loss": 1.9, "wer": 0.21})      # written as eval_loss, eval_wer

metrics.jsonl is the source of truth: every line is flushed as it is written, and a resumed run
first drops the lines after its checkpoint's step, so the file ends up as an uninterrupted run's.
Record keys the plot and the report read: `loss`, `lr`, `tokens_per_s`, and `eval_*`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
EVAL_PREFIX = "eval_"


def plain(value):
    """A JSON-ready value: tensors and numpy scalars become Python numbers."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy array or scalar
        return value.tolist()
    return value


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Tracker:
    """Appends records to OUTPUT_DIR/metrics.jsonl and, when importable, TensorBoard under OUTPUT_DIR/tb."""

    def __init__(self, output_dir: str | Path, resume_step: int = 0, tensorboard: bool = True):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / METRICS_FILE
        self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._writer = _summary_writer(self.output_dir / TB_DIR, resume_step) if tensorboard else None

    def _truncate_after(self, step: int) -> None:
        """Keep only the lines of steps <= `step` (all of them belong to finished, checkpointed work).

        A fresh run (step 0) starts from an empty file; a torn last line of a killed run goes too.
        """
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
        if len(kept) == len(lines):
            return
        logger.info("%s: dropped %d line(s) after step %d", self.path, len(lines) - len(kept), step)
        write_atomic(self.path, "".join(line + "\n" for line in kept))

    def log(self, step: int, **values: float) -> None:
        """Write {"step": step, **values, "time": unix seconds} as one flushed line; numbers to TensorBoard."""
        if "time" in values:
            raise ValueError("log: `time` is added by the tracker; pick another name for the value")
        values = {k: plain(v) for k, v in values.items()}
        record = {"step": int(step), **values, "time": round(time.time(), 3)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                if is_number(value):
                    self._writer.add_scalar(name, value, int(step))

    def log_eval(self, step: int, metrics: dict) -> None:
        """Like `log`, with each key prefixed "eval_" (a key that already has the prefix keeps it)."""
        self.log(step, **{k if k.startswith(EVAL_PREFIX) else EVAL_PREFIX + k: v for k, v in metrics.items()})

    def history(self) -> list[dict]:
        """Every record written so far, read back from metrics.jsonl."""
        if not self._file.closed:
            self._file.flush()
        return read_records(self.path)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line, or None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step") if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _summary_writer(folder: Path, resume_step: int):
    """A TensorBoard SummaryWriter, or None (logged once) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("TensorBoard logging is off: install tensorboard to get %s", folder)
        return None
    # purge_step hides the events a killed run wrote after its checkpoint, as in metrics.jsonl
    return SummaryWriter(str(folder), purge_step=resume_step + 1 if resume_step > 0 else None, flush_secs=10)


def read_records(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file, skipping a torn last line."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipped an unreadable line: %.60s", path, line)
    return records


# ---------------------------------------------------------------- progress bar


def human(n: float) -> str:
    """12300 -> "12.3k", 4.2e6 -> "4.2M", 812 -> "812"."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def format_progress(loss: float, lr: float, tokens_per_s: float, epoch: float | None = None) -> dict:
    """The tqdm postfix: {"loss": "2.314", "lr": "1.0e-04", "tok/s": "12.3k"[, "epoch": "1.25"]}
    (tqdm shows the ETA)."""
    shown = {"loss": f"{loss:.3f}", "lr": f"{lr:.1e}", "tok/s": human(tokens_per_s)}
    return shown | ({"epoch": f"{epoch:.2f}"} if epoch is not None else {})


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
