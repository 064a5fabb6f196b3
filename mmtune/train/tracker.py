"""What a run records: metrics.jsonl (one JSON object a line), TensorBoard, the curves PNG,
report.md and eval.json.

    tracker = Tracker(cfg.train.output_dir, resume_step=state.step)
    tracker.log(step, loss=2.31, lr=1e-4, tokens_per_s=12_300)
    tracker.log_eval(step, {"loss": 1.9, "wer": 0.21})      # written as eval_loss, eval_wer
    write_report(output_dir, to_dict(cfg), final, tracker.history(), extra=dataset.stats())

metrics.jsonl is the source of truth: every line is flushed as it is written, and a resumed run
first drops the lines after its checkpoint's step, so the file ends up as an uninterrupted run's.
Record keys the plot and the report read: `loss`, `lr`, `tokens_per_s`, and `eval_*`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
CURVES_FILE = "curves.png"
REPORT_FILE = "report.md"
EVAL_FILE = "eval.json"
EVAL_PREFIX = "eval_"
RATE_METRICS = ("wer", "cer", "accuracy", "exact_match", "vqa_accuracy")  # fractions, shown as %
LOG_SCALE_DECADES = 2  # the loss axis turns logarithmic when max / min spans more than this


def _plain(value):
    """A JSON-ready value: tensors and numpy scalars become Python numbers."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy array or scalar
        return value.tolist()
    return value


def _is_number(value) -> bool:
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
        tmp = self.path.with_name(f".{METRICS_FILE}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, step: int, **values: float) -> None:
        """Write {"step": step, **values, "time": unix seconds} as one flushed line; numbers to TensorBoard."""
        if "time" in values:
            raise ValueError("log: `time` is added by the tracker; pick another name for the value")
        values = {k: _plain(v) for k, v in values.items()}
        record = {"step": int(step), **values, "time": round(time.time(), 3)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                if _is_number(value):
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


def _human(n: float) -> str:
    """12300 -> "12.3k", 4.2e6 -> "4.2M", 812 -> "812"."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def format_progress(loss: float, lr: float, tokens_per_s: float) -> dict:
    """The tqdm postfix: {"loss": "2.314", "lr": "1.0e-04", "tok/s": "12.3k"} (tqdm shows the ETA)."""
    return {"loss": f"{loss:.3f}", "lr": f"{lr:.1e}", "tok/s": _human(tokens_per_s)}


# ---------------------------------------------------------------- curves


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that carry a finite number under `key`."""
    pairs = [(r["step"], float(r[key])) for r in records
             if _is_number(r.get(key)) and math.isfinite(r[key]) and "step" in r]
    return [s for s, _ in pairs], [v for _, v in pairs]


def smooth(values: list[float], window: int) -> list[float]:
    """Centered moving average over `window` points (narrower at the ends), so it does not lag the data."""
    half = window // 2
    out = []
    for i in range(len(values)):
        h = min(half, i, len(values) - 1 - i)
        out.append(sum(values[i - h:i + h + 1]) / (2 * h + 1))
    return out


NOT_PLOTTED = ("eval_num_samples",)  # counts, not metrics: on the loss axis they would flatten it


def _eval_keys(records: list[dict]) -> list[str]:
    keys = {k for r in records for k, v in r.items()
            if k.startswith(EVAL_PREFIX) and _is_number(v) and k not in NOT_PLOTTED}
    known = [EVAL_PREFIX + m for m in ("loss", *RATE_METRICS)]
    return [k for k in known if k in keys] + sorted(keys - set(known))


def _is_rate(key: str) -> bool:
    return key.removeprefix(EVAL_PREFIX) in RATE_METRICS


def plot_curves(records: list[dict], path: str | Path, title: str = "Training curves") -> Path:
    """A PNG of the training loss (raw and smoothed), the eval metrics and the learning rate by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss = _series(records, "loss")
    eval_keys = _eval_keys(records)
    lr_steps, lr = _series(records, "lr")
    panels = ["loss"] + (["eval"] if eval_keys else []) + (["lr"] if lr else [])
    heights = {"loss": 3.6, "eval": 2.6, "lr": 1.4}  # inches
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(9, 0.9 + sum(heights[p] for p in panels)),
                             gridspec_kw={"height_ratios": [heights[p] for p in panels]})
    axes = dict(zip(panels, axes[:, 0]))
    _plot_loss(axes["loss"], steps, loss)
    if "eval" in axes:
        _plot_eval(axes["eval"], records, eval_keys)
    if "lr" in axes:
        ax = axes["lr"]
        ax.plot(lr_steps, lr, color="tab:green", linewidth=1.2)
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for ax in axes.values():
        ax.grid(True, which="major", alpha=0.35)
    axes[panels[-1]].set_xlabel("optimizer step")
    fig.suptitle(title)
    fig.align_ylabels(list(axes.values()))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_loss(ax, steps: list[int], loss: list[float]) -> None:
    ax.set_ylabel("training loss")
    if not loss:
        ax.text(0.5, 0.5, "no training loss logged yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    many = len(loss) >= 10
    ax.plot(steps, loss, color="tab:blue", alpha=0.3 if many else 1.0, linewidth=1.0,
            marker=None if many else "o", markersize=3, label="loss")
    if many:
        ax.plot(steps, smooth(loss, max(3, len(loss) // 15)), color="tab:blue", linewidth=2.0, label="smoothed")
    positive = [v for v in loss if v > 0]
    if len(positive) == len(loss) and max(positive) / min(positive) > 10 ** LOG_SCALE_DECADES:
        ax.set_yscale("log")
        ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="upper right", frameon=False)


def _plot_eval(ax, records: list[dict], keys: list[str]) -> None:
    """Rates (WER, CER, accuracy) in % on the left axis; eval loss on its own right axis when both show."""
    rates = [k for k in keys if _is_rate(k)]
    others = [k for k in keys if not _is_rate(k)]
    loss_ax = ax.twinx() if rates and others else ax
    colors = iter(["tab:red", "tab:purple", "tab:olive", "tab:cyan", "tab:brown", "tab:pink", "tab:gray"])
    lines = []
    for key in rates:
        s, v = _series(records, key)
        lines += ax.plot(s, [100 * x for x in v], marker="o", markersize=4, color=next(colors),
                         label=f"{_metric_name(key)} (%)")
    for key in others:
        s, v = _series(records, key)
        lines += loss_ax.plot(s, v, marker="s", markersize=4, linestyle="--", color=next(colors),
                              label=_metric_name(key))
    if rates:
        ax.set_ylabel("eval rate (%)")
        ax.set_ylim(bottom=0)
    if others and loss_ax is not ax and all(v >= 0 for k in others for v in _series(records, k)[1]):
        loss_ax.set_ylim(bottom=0)  # both axes start at zero, so the two scales line up at the bottom
    if others:
        loss_ax.set_ylabel(", ".join(map(_metric_name, others)) if len(others) < 3 else "eval value")
    ax.legend(lines, [line.get_label() for line in lines], loc="best", frameon=False, fontsize="small")


# ---------------------------------------------------------------- report and eval.json


def _format_metric(key: str, value) -> str:
    if _is_rate(key) and _is_number(value):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metric_name(key: str) -> str:
    """"eval_wer" -> "WER", "eval_loss" -> "eval loss" (plot), "loss" -> "loss" (report table)."""
    name = key.removeprefix(EVAL_PREFIX)
    return name.upper() if name in ("wer", "cer") else key.replace("_", " ")


def _duration(seconds: float) -> str:
    """3723 -> "1h 02m 03s", 125 -> "2m 05s", 4.21 -> "4.2 s"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _part(name: str, part: dict | None, lora: dict | None) -> str | None:
    """One model part: where it comes from and how it trained."""
    if not part:
        return None
    built = part.get("config") or {}
    source = f"`{part['path']}`" if part.get("path") else f"{built.get('model_type', 'model')} built from a config"
    plan = part.get("train", "?")
    if plan == "lora" and lora:
        plan = f"lora (r={lora.get('r')}, alpha={lora.get('alpha')})"
    line = f"| {name} | {source} | {plan} |"
    projector = part.get("projector")
    if projector:
        kind = projector.get("type", "?") + (f" x{projector['stack']}" if projector.get("type") == "stack" else "")
        line += f"\n| {name} projector | {kind} | {'frozen' if projector.get('frozen') else 'full'} |"
    return line


def _run_section(config: dict, records: list[dict], extra: dict) -> list[str]:
    model = config.get("model") or {}
    parts = [_part(n, model.get(k), model.get("lora")) for n, k in (("LLM", "llm"), ("audio encoder", "audio"),
                                                                      ("vision encoder", "vision"))]
    lines = ["## Run", "", "| part | source | trained |", "| --- | --- | --- |"] + [p for p in parts if p]
    loss_steps = _series(records, "loss")[0]
    steps = extra.get("steps") or (loss_steps[-1] if loss_steps else (config.get("train") or {}).get("max_steps"))
    times = [r["time"] for r in records if _is_number(r.get("time"))]
    seconds = extra.get("train_seconds") or (max(times) - min(times) if len(times) > 1 else None)
    speeds = _series(records, "tokens_per_s")[1]
    speed = extra.get("tokens_per_s") or (sum(speeds) / len(speeds) if speeds else None)
    facts = [("steps", steps), ("training time", _duration(seconds) if seconds else None),
             ("throughput", f"{_human(speed)} tokens/s" if speed else None),
             ("trainable parameters", _human(extra["trainable_params"]) if extra.get("trainable_params") else None)]
    lines += [""] + [f"- {k}: {v}" for k, v in facts if v is not None]
    return lines


def _loss_table(records: list[dict], rows: int = 6) -> list[str]:
    steps, loss = _series(records, "loss")
    if not loss:
        return []
    picks = sorted({round(i * (len(loss) - 1) / (rows - 1)) for i in range(rows)}) if len(loss) > rows \
        else range(len(loss))
    lr = dict(zip(*_series(records, "lr")))
    lines = ["## Training loss", "", "| step | loss | lr |", "| ---: | ---: | ---: |"]
    for i in picks:
        lines.append(f"| {steps[i]} | {loss[i]:.4f} | {format(lr[steps[i]], '.2e') if steps[i] in lr else ''} |")
    return lines


def _reasons(stats: dict) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in (stats.get("skipped_by_reason") or {}).items())


def _data_section(extra: dict) -> list[str]:
    """Data stats: a flat `dataset.stats()` dict, or one such dict per split
    ({"train_data": {...}, "eval_data": {...}}: columns "train" and "eval")."""
    splits = {k.removesuffix("_data"): v for k, v in extra.items() if isinstance(v, dict) and "rows" in v}
    if "rows" in extra:
        splits = {"data": extra, **splits}
    if not splits:
        return []
    lines = ["## Data", "", "| | " + " | ".join(splits) + " |", "| --- |" + " ---: |" * len(splits)]
    rows = [("rows kept", lambda s: s.get("rows")),
            ("rows skipped", lambda s: s.get("skipped")),
            ("skipped because", _reasons),
            ("tokens", lambda s: s.get("tokens")),
            ("supervised token fraction",
             lambda s: f"{100 * s['supervised_fraction']:.1f}%" if _is_number(s.get("supervised_fraction")) else None),
            ("audio clips", lambda s: s.get("audio_clips")),
            ("images", lambda s: s.get("images"))]
    for name, get in rows:
        cells = [get(s) for s in splits.values()]
        if any(c not in (None, "") for c in cells):
            lines.append(f"| {name} | " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return lines


def write_report(output_dir: str | Path, config: dict, final_metrics: dict, records: list[dict],
                 extra: dict | None = None) -> Path:
    """OUTPUT_DIR/report.md (and the curves.png it embeds): the run, final metrics, loss, data, next command.

    `config` is the whole run config as a dict (`to_dict(cfg)`); `extra` may hold `steps`,
    `train_seconds`, `tokens_per_s`, `trainable_params` and the data stats (see `_data_section`).
    """
    output_dir, extra = Path(output_dir), extra or {}
    plot_curves(records, output_dir / CURVES_FILE, title=f"Training curves: {output_dir.name}")
    lines = [f"# mmtune run: {output_dir.name}", ""] + _run_section(config, records, extra)
    if final_metrics:
        lines += ["", "## Final evaluation", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {_metric_name(k)} | {_format_metric(k, v)} |" for k, v in final_metrics.items()
                  if _is_number(v) or isinstance(v, str)]
    for section in (_loss_table(records), [f"![curves]({CURVES_FILE})"], _data_section(extra)):
        if section:
            lines += [""] + section
    data = config.get("data") or {}
    manifest = data.get("eval") or data.get("train") or "MANIFEST"
    lines += ["", "## Evaluate the final checkpoint", "", "```",
              f"mmtune eval --checkpoint {output_dir / 'final'} --data {manifest}", "```", ""]
    path = output_dir / REPORT_FILE
    _write_atomic(path, "\n".join(lines))
    return path


def write_eval_json(output_dir: str | Path, metrics: dict) -> Path:
    """OUTPUT_DIR/eval.json, indented, written atomically (a reader never sees half a file)."""
    path = Path(output_dir) / EVAL_FILE
    _write_atomic(path, json.dumps(metrics, indent=2, default=_plain) + "\n")
    return path


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
