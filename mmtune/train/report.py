"""What a finished run leaves for people: report.md (embedding curves.png) and eval.json.

    write_report(output_dir, to_dict(cfg), final_metrics, tracker.history(), extra=dataset.stats())
    write_eval_json(output_dir, final_metrics)
"""

from __future__ import annotations

import json
from pathlib import Path

from mmtune.train.curves import CURVES_FILE, is_rate, metric_name, plot_curves, series
from mmtune.train.tracker import human, is_number, plain, write_atomic

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
    loss_steps = series(records, "loss")[0]
    steps = extra.get("steps") or (loss_steps[-1] if loss_steps else (config.get("train") or {}).get("max_steps"))
    times = [r["time"] for r in records if is_number(r.get("time"))]
    seconds = extra.get("train_seconds") or (max(times) - min(times) if len(times) > 1 else None)
    speeds = series(records, "tokens_per_s")[1]
    speed = extra.get("tokens_per_s") or (sum(speeds) / len(speeds) if speeds else None)
    facts = [("steps", steps), ("training time", _duration(seconds) if seconds else None),
             ("throughput", f"{human(speed)} tokens/s" if speed else None),
             ("time waiting for data", f"{100 * extra['data_wait_fraction']:.1f}%"
              if is_number(extra.get("data_wait_fraction")) else None),
             ("trainable parameters", human(extra["trainable_params"]) if extra.get("trainable_params") else None)]
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
    lines = [f"# mmtune run: {output_dir.name}", ""] + _run_section(config, records, extra)
    if final_metrics:
        lines += ["", "## Final evaluation", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {metric_name(k)} | {_format_metric(k, v)} |" for k, v in final_metrics.items()
                  if is_number(v) or isinstance(v, str)]
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
