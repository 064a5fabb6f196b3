"""A run's output_dir: who owns it, what is in it, which checkpoint a resume continues.

    run_dir = RunDir.claim(Path("runs/speech_digits"), resume=None, overwrite=False)
    ...                              # the folder is this run's until run_dir.release()

One run at a time: the run holds an exclusive flock on `.mmtune.lock` (which names its PID, host
and start time); a second run into the folder is refused with the holder's PID. The kernel drops
the flock when the process ends, however it ends, so a killed run's lock is free to take. A
folder that already holds a run's files is never silently reused: `resume` continues that run,
`train.overwrite` deletes its checkpoints and records first, anything else is refused. Temporary
folders of a checkpoint write that was killed (`.checkpoint-N.tmp-PID`, `.final.old-PID`) are
removed (or, for a folder swapped out and not replaced, put back) when the folder is claimed.

A checkpoint records the run's whole config; a resume compares it with the config given now
(`config_changes`): settings that only steer logging, evaluation, saving, memory and the run's
length are applied and recorded, every other change is refused with the list of keys.
"""

import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from mmtune.errors import MmtuneError

log = logging.getLogger("mmtune")

CHECKPOINT_PREFIX = "checkpoint-"
LOCK_FILE = ".mmtune.lock"
FINAL_DIR = "final"
# what a run writes into output_dir besides its checkpoints (tracker, report, evaluation)
RECORD_FILES = ("metrics.jsonl", "tb", "eval.json", "report.md", "curves.png", "predictions.jsonl")
# settings a resumed run may change: they steer logging, evaluation, saving, memory (exact recomputation)
# and the run's length, not the updates already made (the schedule continues over the new length)
RESUME_MAY_CHANGE = ("train.output_dir", "train.resume", "train.overwrite", "train.log_every", "train.eval_every",
                     "train.save_every", "train.keep_last", "train.cpu_threads", "train.gradient_checkpointing",
                     "train.fsdp",
                     "train.max_steps", "train.epochs", "train.early_stopping_patience", "data.num_workers",
                     "data.prefetch", "data.eval", "eval.", "base_dir")


class RunDirError(MmtuneError):
    """output_dir cannot be used for this run (held by another run, holds another run, not writable)."""


class RunDir:
    """This run's claim on output_dir (only the main process claims it)."""

    def __init__(self, out: Path):
        self.out = out
        self.lock = out / LOCK_FILE
        self._fd: int | None = None  # the open lock file while this run holds it

    @classmethod
    def claim(cls, out: Path, resume: str | None, overwrite: bool) -> "RunDir":
        """Create (or check) the folder, take its lock, clear a killed write's leftovers, and refuse
        (or with `overwrite`, clear) another run's files when this run does not continue them."""
        run_dir = cls(out)
        run_dir._create()
        run_dir._lock()
        try:
            run_dir._remove_leftovers()
            found = run_dir.previous_run()
            # resume=PATH continues the run in output_dir only when PATH is one of its checkpoints
            continues = resume == "auto" or (resume is not None and Path(resume).resolve().parent == out.resolve())
            if found and not continues:
                if not overwrite:
                    raise RunDirError(f"train.output_dir {out} holds another run ({', '.join(found[:4])}): continue it "
                                      f"with resume=auto, start afresh there with train.overwrite=true (its "
                                      f"checkpoints and records are deleted first), or give another output_dir")
                run_dir._clear(found)
        except BaseException:
            run_dir.release()
            raise
        return run_dir

    def _create(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".mmtune.write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except FileExistsError:
            raise RunDirError(f"train.output_dir {self.out} is a file, not a folder: give a folder") from None
        except OSError as e:
            raise RunDirError(f"train.output_dir {self.out} is not writable ({e.strerror}): give a folder this "
                              f"user can write to, e.g. output_dir=runs/NAME") from None

    def _lock(self) -> None:
        """Hold an exclusive flock on `.mmtune.lock` for the run: the kernel drops it when the process ends,
        however it ends, so the lock of a killed run (any host, any PID) is free to take."""
        fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _read_lock(self.lock)
            raise RunDirError(f"train.output_dir {self.out} is in use by another run (PID {holder.get('pid', '?')} "
                              f"on {holder.get('host', '?')}, since {holder.get('started', '?')}; it holds "
                              f"{self.lock}): wait for it to end, or give another output_dir") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self.lock.unlink(missing_ok=True)
            os.close(fd)  # closing drops the flock

    def _remove_leftovers(self) -> None:
        """Temporary folders of a checkpoint write that was killed (no live run writes here: we hold the
        lock). A kill between a replace's two renames leaves the previous folder only as `.NAME.old-PID`:
        that one is put back, not removed."""
        for old in self.out.glob(".*.old-*"):
            name = old.name[1:].rsplit(".old-", 1)[0]
            if not (self.out / name).exists():
                log.info("restoring %s from %s, left by an interrupted checkpoint write", name, old.name)
                old.rename(self.out / name)
        for path in list(self.out.glob(".*.tmp-*")) + list(self.out.glob(".*.old-*")):
            log.info("removing %s, left by a checkpoint write that was interrupted", path)
            shutil.rmtree(path, ignore_errors=True)

    def previous_run(self) -> list[str]:
        """Names of a run's files already in the folder (checkpoints, final/, records)."""
        names = [p.name for p in sorted(checkpoints(self.out), key=step_of, reverse=True)]
        names += [n for n in (FINAL_DIR,) + RECORD_FILES if (self.out / n).exists()]
        return names

    def _clear(self, names: list[str]) -> None:
        log.info("train.overwrite: deleting the previous run's %s in %s", ", ".join(names), self.out)
        for name in names:
            path = self.out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def checkpoints(out: Path) -> list[Path]:
    return [p for p in out.glob(f"{CHECKPOINT_PREFIX}*") if step_of(p) >= 0 and p.is_dir()]


def step_of(path: Path) -> int:
    suffix = path.name[len(CHECKPOINT_PREFIX):]
    return int(suffix) if suffix.isdigit() else -1


def find_resume(out: Path, resume: str | None) -> Path | None:
    """`auto`: the newest OUTPUT_DIR/checkpoint-N (None if there is none); a path: that folder."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_dir():
            raise RunDirError(f"train.resume: {path} is not a folder; give a checkpoint-N folder or 'auto'")
        return path
    found = sorted(checkpoints(out), key=step_of)
    if not found:
        log.info("resume=auto: no checkpoint in %s, starting from scratch", out)
        return None
    return found[-1]


def prune_checkpoints(out: Path, keep_last: int, keep: str | None = None) -> None:
    """Remove all but the newest `keep_last` (>= 1) checkpoint-N folders, never the one named `keep` (the best)."""
    found = sorted((p for p in checkpoints(out) if p.name != keep), key=step_of)
    for old in found[: max(len(found) - max(keep_last, 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("config", "columns"):  # model configs compare whole
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict, now: dict) -> tuple[dict, dict]:
    """(applied, refused): {key: (checkpoint's value, value now)} for every setting that differs."""
    before, after = _flatten(saved), _flatten(now)
    # a key on one side only is a setting of another mmtune version (at its default then): not a change
    changed = {k: (before[k], after[k]) for k in sorted(set(before) & set(after)) if before[k] != after[k]}
    applied = {k: v for k, v in changed.items() if k.startswith(RESUME_MAY_CHANGE)}
    return applied, {k: v for k, v in changed.items() if k not in applied}


def describe_changes(changes: dict) -> str:
    return ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changes.items())
