"""What a user reads: progress in a log file, log lines once per run, not once per process."""

import io
import logging
import time

from mmtune import console


def test_a_bar_in_a_file_is_plain_periodic_lines(monkeypatch):
    monkeypatch.setattr(console, "LINE_SECONDS", 0.05)
    out = io.StringIO()
    bar = console.progress_bar(total=40, desc="train", unit="step", stream=out)
    inner = None
    for step in range(40):
        time.sleep(0.005)
        bar.update(1)
        bar.set_postfix({"loss": f"{1 / (step + 1):.3f}"})  # a new postfix waits for the next timed line
        if step == 20:
            inner = console.progress_bar(range(3), desc="eval", leave=False, stream=out)  # nested, as eval is
            list(inner)
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text  # no redraws, no cursor moves
    assert lines[0] == "train 0/40 [00:00<?, ?step/s]" and lines[-1].startswith("train 40/40 [")
    assert "loss=0.025" in lines[-1] and "eval 3/3 [" in text  # the nested bar's total stays in the file
    assert 4 <= len(lines) < 25  # about one line per 0.05 s of the 0.2 s run, not one per update


def test_other_processes_print_warnings_only(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(console.ALL_PROCESSES_ENV, raising=False)
    handler = console.setup_logging(stream=out)
    try:
        log = logging.getLogger("mmtune.test")
        log.info("start-up line")
        log.warning("a bad row")
        assert out.getvalue() == "WARNING [rank 1] a bad row\n"
        assert console.setup_logging(all_processes=True, stream=out) is not handler  # replaces, never adds
        handler = [h for h in logging.getLogger().handlers if isinstance(h, console._ConsoleHandler)]
        assert len(handler) == 1
        log.info("asked for")
        assert out.getvalue().endswith("INFO [rank 1] asked for\n")
    finally:
        for h in [h for h in logging.getLogger().handlers if isinstance(h, console._ConsoleHandler)]:
            logging.getLogger().removeHandler(h)
