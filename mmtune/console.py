"""What mmtune prints while it works: log lines and progress bars, on a terminal and in a file.

    setup_logging()                                  # the CLI calls it once, before any command
    bar = progress_bar(total=3000, desc="train", unit="step")
    bar.update(1); bar.set_postfix({"loss": "0.123"})

On a terminal a progress bar redraws in place and log lines are printed above it (never glued to
it). When stderr is a file or a pipe, a bar is written as a plain line at most every
`LINE_SECONDS` seconds and once when it ends ("train 120/3000 [00:30<12:00, 4.00step/s, loss=...]"),
so a log file reads top to bottom and stays small.

Under several processes (`accelerate launch` sets RANK), only process 0 prints INFO lines;
warnings and errors come from every process, tagged with its rank. `MMTUNE_LOG_ALL_PROCESSES=1`
(or `mmtune train --log-all-processes`) prints every process's INFO lines too.
"""

import logging
import os
import re
import sys

from tqdm.auto import tqdm

LINE_SECONDS = 30.0  # a bar written to a file or pipe prints a line at most this often
LINE_FORMAT = "{desc} {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
ALL_PROCESSES_ENV = "MMTUNE_LOG_ALL_PROCESSES"
_CURSOR = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal cursor moves tqdm uses for nested bars


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def process_rank() -> int:
    """This process's rank under torchrun / `accelerate launch` (RANK), 0 for a plain run."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def progress_bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", disable: bool = False,
             initial: int = 0, leave: bool = True, stream=None):
    """A tqdm bar that redraws on a terminal and writes periodic plain lines anywhere else."""
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial, leave=leave,
                    file=stream)
    # leave=True: the last line (the totals) stays in the file even for bars that vanish on a terminal;
    # position=0: a bar opened while another runs (eval inside training) is its own line, not a cursor move
    return _LineBar(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial, leave=True,
                    position=0, file=_Lines(stream), mininterval=LINE_SECONDS, miniters=1,
                    bar_format=LINE_FORMAT, ascii=True)


class _LineBar(tqdm):
    """A bar for files: a new postfix waits for the next timed line instead of forcing one."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


class _Lines:
    """A file for tqdm that turns its in-place redraws into whole lines: "\\rtext" -> "text\\n"."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text: str) -> None:
        text = _CURSOR.sub("", text.replace("\r", "")).rstrip("\n")
        if text.strip() and text != self.last:  # a bar's close repeats its last line
            self.stream.write(text + "\n")
            self.last = text

    def flush(self) -> None:
        self.stream.flush()


class _ConsoleHandler(logging.StreamHandler):
    """Writes log lines through tqdm on a terminal, so a running bar is redrawn below the line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if is_terminal(self.stream):
                tqdm.write(message, file=self.stream)
            else:
                self.stream.write(message + "\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


class _ProcessFilter(logging.Filter):
    """Process 0 prints everything; the others only warnings and errors, unless all are asked for."""

    def __init__(self, rank: int, all_processes: bool):
        super().__init__()
        self.rank, self.all_processes = rank, all_processes

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or self.all_processes or record.levelno >= logging.WARNING


def setup_logging(all_processes: bool | None = None, stream=None) -> logging.Handler:
    """Install mmtune's console handler on the root logger (once: a second call replaces the first)."""
    if all_processes is None:
        all_processes = os.environ.get(ALL_PROCESSES_ENV, "") not in ("", "0")
    rank = process_rank()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    handler = _ConsoleHandler(sys.stderr if stream is None else stream)
    tag = f"[rank {rank}] " if world > 1 else ""
    handler.setFormatter(logging.Formatter(f"%(levelname)s {tag}%(message)s"))
    handler.addFilter(_ProcessFilter(rank, all_processes))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ConsoleHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    return handler
