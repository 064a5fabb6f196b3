"""The training curves PNG: training loss (raw and smoothed), eval metrics and learning rate by step.

    plot_curves(read_records("runs/x/metrics.jsonl"), "runs/x/curves.png")
"""

from __future__ import annotations

import math
from pathlib import Path

from mmtune.train.tracker import EVAL_PREFIX, is_number

CURVES_FILE = "curves.png"
RATE_METRICS = ("wer", "cer", "accuracy", "exact_match", "vqa_accuracy")  # fractions, shown as %
LOG_SCALE_DECADES = 2  # the loss axis turns logarithmic when max / min spans more than this


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that carry a finite number under `key`."""
    pairs = [(r["step"], float(r[key])) for r in records
             if is_number(r.get(key)) and math.isfinite(r[key]) and "step" in r]
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
            if k.startswith(EVAL_PREFIX) and is_number(v) and k not in NOT_PLOTTED}
    known = [EVAL_PREFIX + m for m in ("loss", *RATE_METRICS)]
    return [k for k in known if k in keys] + sorted(keys - set(known))


def is_rate(key: str) -> bool:
    return key.removeprefix(EVAL_PREFIX) in RATE_METRICS


def plot_curves(records: list[dict], path: str | Path, title: str = "Training curves") -> Path:
    """A PNG of the training loss (raw and smoothed), the eval metrics and the learning rate by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss = series(records, "loss")
    eval_keys = _eval_keys(records)
    lr_steps, lr = series(records, "lr")
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
    rates = [k for k in keys if is_rate(k)]
    others = [k for k in keys if not is_rate(k)]
    loss_ax = ax.twinx() if rates and others else ax
    colors = iter(["tab:red", "tab:purple", "tab:olive", "tab:cyan", "tab:brown", "tab:pink", "tab:gray"])
    lines = []
    for key in rates:
        s, v = series(records, key)
        lines += ax.plot(s, [100 * x for x in v], marker="o", markersize=4, color=next(colors),
                         label=f"{metric_name(key)} (%)")
    for key in others:
        s, v = series(records, key)
        lines += loss_ax.plot(s, v, marker="s", markersize=4, linestyle="--", color=next(colors),
                              label=metric_name(key))
    if rates:
        ax.set_ylabel("eval rate (%)")
        ax.set_ylim(bottom=0)
    if others and loss_ax is not ax and all(v >= 0 for k in others for v in series(records, k)[1]):
        loss_ax.set_ylim(bottom=0)  # both axes start at zero, so the two scales line up at the bottom
    if others:
        loss_ax.set_ylabel(", ".join(map(metric_name, others)) if len(others) < 3 else "eval value")
    ax.legend(lines, [line.get_label() for line in lines], loc="best", frameon=False, fontsize="small")


def metric_name(key: str) -> str:
    """"eval_wer" -> "WER", "eval_loss" -> "eval loss" (plot), "loss" -> "loss" (report table)."""
    name = key.removeprefix(EVAL_PREFIX)
    return name.upper() if name in ("wer", "cer") else key.replace("_", " ")
