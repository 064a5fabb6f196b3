"""What a user sees of a failed command: one `error:` line, never a traceback."""

from mmtune.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """-> (exit status, stdout, stderr) of `mmtune ARGV`; a usage error (SystemExit) gives its code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def one_error_line(capsys) -> str:
    """The single `error:` line of what the last command printed (no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]
