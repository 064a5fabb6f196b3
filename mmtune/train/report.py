"""What a finished run leaves for people: report.md (embedding curves.png) and eval.json.

    write_report(output_dir, to_dict(cfg), final_metrics, tracker.history(), extra=dataset.stats())
    write_eval_json(output_dir, final_metrics)

report.md opens with what a reader should notice (a training loss far below the held-out loss,
a held-out metric worse at the end than earlier, skipped rows, a group far behind the rest), then
the run, the final evaluation (per group where the eval rows have a grouping column), the loss,
the curves and the data.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmtune.config import LOWER_IS_BETTER, HftConfig
from mmtune.train.curves import CURVES_FILE, is_rate, metric_name, plot_curves, series
from mmtune.train.tracker import EVAL_PREFIX, human, is_number, plain, write_atomic

GAP_RATIO, GAP_ABSOLUTE = 2.0, 0.1  # held-out loss this many times the training loss, and this much above it
WORSE_RELATIVE, WORSE_ABSOLUTE = 0.05, 0.002  # a metric this much worse at the end than at its best
GROUP_RATIO, GROUP_ABSOLUTE = 1.5, 0.02  # a group's error rate this many times the overall one, and this much above

REPORT_FILE = "report.md"
EVAL_FILE = "eval.json"


def _format_metric(key: str, value) -> str:
    if is_rate(key) and is_number(value):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    """3723 -> "1h 02m 03s", 125 -> "2m 05s", 4.21 -> "4.2 s"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _part(name: str, part: dict | None, lora: dict | None, hft: dict | None = None) -> str | None:
    """One model part: where it comes from and how it trained."""
    if not part:
        return None
    built = part.get("config") or {}
    source = f"`{part['path']}`" if part.get("path") else f"{built.get('model_type', 'model')} built from a config"
    plan = part.get("train", "?")
    if plan == "lora" and lora:
        plan = f"lora (r={lora.get('r')}, alpha={lora.get('alpha')})"
    if plan == "hft":
        plan = f"hft ({(hft or {}).get('rounds', HftConfig().rounds)} rounds, half of each layer frozen in turn)"
    line = f"| {name} | {source} | {plan} |"
    projector = part.get("projector")
    if projector:
        kind = projector.get("type", "?")
        kind += f" x{projector['stack']}" if kind.startswith("stack") else ""
        line += f"\n| {name} projector | {kind} | {'frozen' if projector.get('frozen') else 'full'} |"
    return line


def _run_section(config: dict, records: list[dict], extra: dict) -> list[str]:
    model = config.get("model") or {}
    parts = [_part(n, model.get(k), model.get("lora"), model.get("hft")) for n, k in (("LLM", "llm"), ("audio encoder", "audio"),
                                                                      ("vision encoder", "vision"))]
    lines = ["## Run", "", "| part | source | trained |", "| --- | --- | --- |"] + [p for p in parts if p]
    loss_steps = series(records, "loss")[0]
    steps = extra.get("steps") or (loss_steps[-1] if loss_steps else (config.get("train") or {}).get("max_steps"))
    times = [r["time"] for r in records if is_number(r.get("time"))]
    seconds = extra.get("train_seconds") or (max(times) - min(times) if len(times) > 1 else None)
    speeds = series(records, "tokens_per_s")[1]
    speed = extra.get("tokens_per_s") or (sum(speeds) / len(speeds) if speeds else None)
    best = extra.get("best") or {}
    final = extra.get("final")
    facts = [("steps", steps), ("epochs", f"{extra['epochs']:.2f}" if is_number(extra.get("epochs")) else None),
             ("stopped", extra.get("stopped")),
             ("best checkpoint", f"`{best['checkpoint']}` ({best['metric']} {_format_metric(best['metric'], best['value'])}"
                                 f" at step {best['step']})" if best.get("checkpoint") else None),
             ("final/ holds", f"the {final} weights (step {extra['step']})" if final and "step" in extra else None),
             ("training time", _duration(seconds) if seconds else None),
             ("throughput", f"{human(speed)} tokens/s" if speed else None),
             ("time waiting for data", f"{100 * extra['data_wait_fraction']:.1f}%"
              if is_number(extra.get("data_wait_fraction")) else None),
             ("trainable parameters", human(extra["trainable_params"]) if extra.get("trainable_params") else None)]
    facts += [("changed on resume", f"at step {r['step']} (from `{r['from']}`): {r['changed']}")
              for r in extra.get("resumes") or []]
    lines += [""] + [f"- {k}: {v}" for k, v in facts if v is not None]
    return lines


def _loss_table(records: list[dict], rows: int = 6) -> list[str]:
    steps, loss = series(records, "loss")
    if not loss:
        return []
    picks = sorted({round(i * (len(loss) - 1) / (rows - 1)) for i in range(rows)}) if len(loss) > rows \
        else range(len(loss))
    lr = dict(zip(*series(records, "lr")))
    lines = ["## Training loss", "", "| step | loss | lr |", "| ---: | ---: | ---: |"]
    for i in picks:
        lines.append(f"| {steps[i]} | {loss[i]:.4f} | {format(lr[steps[i]], '.2e') if steps[i] in lr else ''} |")
    return lines


def _groups_section(final_metrics: dict) -> list[str]:
    """One table per grouping column of the eval rows: value, samples and each generation metric."""
    lines = []
    for column, groups in (final_metrics.get("groups") or {}).items():
        names = [k for k in next(iter(groups.values()), {}) if k != "num_samples"]
        lines += ["", f"### By {column}", "", f"| {column} | samples | " + " | ".join(map(metric_name, names)) + " |",
                  "| --- | ---: |" + " ---: |" * len(names)]
        for value, m in groups.items():
            lines.append(f"| {value} | {m['num_samples']} | "
                         + " | ".join(_format_metric(k, m.get(k)) for k in names) + " |")
    return lines


def notices(config: dict, final_metrics: dict, records: list[dict], extra: dict) -> list[str]:
    """What a reader of the report should notice, one sentence each (empty when nothing stands out)."""
    found = []
    train_cfg = config.get("train") or {}
    _, loss = series(records, "loss")
    eval_loss = final_metrics.get("loss")
    if loss and is_number(eval_loss):
        tail = loss[-max(1, min(5, len(loss) // 10 or 1)):]
        train_loss = sum(tail) / len(tail)
        if eval_loss > GAP_RATIO * train_loss and eval_loss - train_loss > GAP_ABSOLUTE:
            found.append(f"The held-out loss ({eval_loss:.4g}) is {eval_loss / max(train_loss, 1e-12):.0f}x the "
                         f"training loss at the end ({train_loss:.4g}): the model fits its training rows far better "
                         f"than unseen ones. More varied data or augmentation, fewer steps, or train.best_metric with "
                         f"train.early_stopping_patience keep what generalizes.")
    for key in sorted({k for r in records for k in r if k.startswith(EVAL_PREFIX)}):
        name = key.removeprefix(EVAL_PREFIX)
        if name not in LOWER_IS_BETTER + ("accuracy",):
            continue
        steps, values = series(records, key)
        if len(values) < 2:
            continue
        sign = 1 if name in LOWER_IS_BETTER else -1
        i = min(range(len(values)), key=lambda j: sign * values[j])
        best, last = values[i], values[-1]
        if sign * (last - best) > max(WORSE_RELATIVE * abs(best), WORSE_ABSOLUTE):
            keep = (f"final/ holds the {extra['final']} weights" if train_cfg.get("best_metric") == name
                    and extra.get("final") else f"train.best_metric: {name} keeps the best checkpoint")
            found.append(f"Held-out {metric_name(name)} was {_format_metric(key, best)} at step {steps[i]} and is "
                         f"{_format_metric(key, last)} at the end (step {steps[-1]}); {keep}.")
    for split in ("train", "eval"):
        stats = extra.get(f"{split}_data") or {}
        if stats.get("skipped"):
            found.append(f"{stats['skipped']} of {stats['skipped'] + stats.get('rows', 0)} {split} rows were skipped "
                         f"({_reasons(stats) or 'see the log'}); `mmtune data check` names every one.")
    for column, groups in (final_metrics.get("groups") or {}).items():
        for name in (k for k in ("wer", "cer") if is_number(final_metrics.get(k))):
            overall = final_metrics[name]
            value, worst = max(((v, m[name]) for v, m in groups.items() if is_number(m.get(name))),
                               key=lambda vm: vm[1], default=(None, None))
            if worst is not None and worst > GROUP_RATIO * overall and worst - overall > GROUP_ABSOLUTE:
                found.append(f"{metric_name(name)} for {column} {value} is {_format_metric(name, worst)}, against "
                             f"{_format_metric(name, overall)} over all held-out rows.")
            break
    return found


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
             lambda s: f"{100 * s['supervised_fraction']:.1f}%" if is_number(s.get("supervised_fraction")) else None),
            ("audio clips", lambda s: s.get("audio_clips")),
            ("images", lambda s: s.get("images")),
            ("rows decoded longer than indexed", lambda s: s.get("longer_than_indexed")),
            ("row draws left out for the token budget", lambda s: s.get("dropped_for_budget"))]
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
    lines = [f"# mmtune run: {output_dir.name}", ""]
    notes = notices(config, final_metrics, records, extra)
    if notes:
        lines += ["## What to notice", ""] + [f"- {note}" for note in notes] + [""]
    lines += _run_section(config, records, extra)
    if final_metrics:
        lines += ["", "## Final evaluation", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {metric_name(k)} | {_format_metric(k, v)} |" for k, v in final_metrics.items()
                  if is_number(v) or isinstance(v, str)]
        lines += _groups_section(final_metrics)
    for section in (_loss_table(records), [f"![curves]({CURVES_FILE})"], _data_section(extra)):
        if section:
            lines += [""] + section
    data = config.get("data") or {}
    manifest = data.get("eval") or data.get("train") or "MANIFEST"
    lines += ["", "## Evaluate the final checkpoint", "", "```",
              f"mmtune eval --checkpoint {output_dir / 'final'} --data {manifest}", "```", ""]
    path = output_dir / REPORT_FILE
    write_atomic(path, "\n".join(lines))
    return path


def write_eval_json(output_dir: str | Path, metrics: dict) -> Path:
    """OUTPUT_DIR/eval.json, indented, written atomically (a reader never sees half a file)."""
    path = Path(output_dir) / EVAL_FILE
    write_atomic(path, json.dumps(metrics, indent=2, default=plain) + "\n")
    return path
