"""An evaluation run: the loss over an eval set, then generation scored against the references.

    metrics, records = evaluate(model, tokenizer, eval_dataset, metrics=("loss", "wer", "accuracy"))
    metrics   # {"loss": 0.41, "wer": 0.12, "accuracy": 0.8, "num_samples": 200,
              #  "groups": {"voice": {"en-029": {"num_samples": 50, "wer": 0.1, "accuracy": 0.84}, ...}}}
    write_predictions(records, "runs/digits/predictions.jsonl")

The loss is summed token cross entropy over all supervised tokens / their count (not a mean of
batch means). Generation prompts are the samples without their last assistant turn; that turn's
text is the reference. WER/CER/accuracy come from `mmtune.eval.metrics` (normalized text).
When the rows have grouping columns (`eval.group_by`; by default voice, speaker, task, language),
the generation metrics are also given per value of each, under "groups".
"""

import json
from pathlib import Path

from mmtune.collators.padded import collate_padded
from mmtune.config import EVAL_METRICS, GROUP_COLUMNS, ConfigError
from mmtune.console import progress_bar
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.example import to_device
from mmtune.data.formats import Sample
from mmtune.data.loader import BatchKey, Draws, draw_batches
from mmtune.eval.metrics import cer, error_counts, exact_match, normalizer, wer
from mmtune.infer.generate import eval_mode, generate, length_batches, model_device

METRICS = EVAL_METRICS  # ("loss", "wer", "cer", "accuracy")
GENERATION_METRICS = {"wer": wer, "cer": cer, "accuracy": exact_match}


def evaluate(model, tokenizer, dataset: MultimodalDataset, metrics=("loss", "wer", "cer", "accuracy"),
             max_new_tokens: int = 32, batch_size: int = 16, max_samples: int | None = None,
             progress: bool = True, group_by: list | None = None, normalizer_name: str = "mmtune",
             num_beams: int = 1) -> tuple[dict, list[dict]]:
    """-> ({metric: value, "num_samples": N[, "groups": ...]}, per-sample records; empty
    when no generation metric). group_by: row columns to score by (None: the GROUP_COLUMNS the first row has);
    normalizer_name: the text normalizer of WER/CER/accuracy (`mmtune.eval.metrics.normalizer`); num_beams: 1
    greedy, more beam search.

    Samples are encoded batch by batch (in data.num_workers processes), never all at once.
    """
    check_metrics(metrics)
    if dataset.encoder.train:
        raise ValueError("evaluate needs a dataset built with train=False (no augmentation)")
    n = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    keys = [BatchKey(0, tuple(b)) for b in length_batches(dataset.lengths[:n], batch_size)]
    results: dict = {}
    if "loss" in metrics:
        results["loss"] = eval_loss(model, dataset, keys, tokenizer.pad_token_id, progress)
    records = []
    if any(m in GENERATION_METRICS for m in metrics):
        columns = group_columns(dataset, group_by)
        normalize = normalizer(normalizer_name)
        records = generate_records(model, tokenizer, dataset, keys, max_new_tokens, batch_size, progress, columns,
                                   normalize, num_beams)
        results.update(score(records, metrics, normalize))
        groups = group_scores(records, metrics, columns, normalize)
        if groups:
            results["groups"] = groups
    results["num_samples"] = len(records) if records else n
    return results, records


def check_metrics(metrics) -> None:
    """Raise ConfigError (a ValueError) naming the metrics not in METRICS."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown eval metric(s) {unknown}; choose from {', '.join(METRICS)}")


def score(records: list[dict], metrics, normalize=normalizer()) -> dict:
    """The generation metrics of `metrics` over prediction records: {"wer": 0.12, ...}."""
    references, predictions = [r["reference"] for r in records], [r["prediction"] for r in records]
    return {name: GENERATION_METRICS[name](references, predictions, normalize)
            for name in metrics if name in GENERATION_METRICS}


def group_columns(dataset: MultimodalDataset, requested: list | None) -> list[str]:
    """eval.group_by as given, or the GROUP_COLUMNS that the dataset's first row has."""
    if requested is not None:
        return list(requested)
    return list(dataset.fields(0, GROUP_COLUMNS)) if len(dataset) else []


def group_scores(records: list[dict], metrics, columns: list[str], normalize=normalizer()) -> dict:
    """{column: {value: {"num_samples": n, metric: value}}} for each grouping column, values sorted;
    rows without the column are left out of its groups."""
    groups = {}
    for column in columns:
        by_value: dict[str, list[dict]] = {}
        for r in records:
            if column in r.get("groups", {}):
                by_value.setdefault(r["groups"][column], []).append(r)
        if by_value:
            groups[column] = {value: {"num_samples": len(rs), **score(rs, metrics, normalize)}
                              for value, rs in sorted(by_value.items())}
    return groups


def _drawn(dataset: MultimodalDataset, keys: list[BatchKey], mode: str, pad_token_id: int, desc: str,
           progress: bool):
    """The drawn batches of `keys` (mode "example": padded batches; "prompt": lists of prompts), with a bar."""
    data = dataset.encoder.data
    draws = Draws(dataset, collate_padded if mode == "example" else None, pad_token_id, mode=mode,
                  on_bad=data.on_bad_sample, workers=data.num_workers)
    items = draw_batches(draws, keys, data)
    return progress_bar(items, total=len(keys), desc=desc, unit="batch", disable=not progress, leave=False)


def eval_loss(model, dataset: MultimodalDataset, keys: list[BatchKey], pad_token_id: int,
              progress: bool = False) -> float:
    """Summed token loss over every supervised token / their count, from padded batches, no grad."""
    loss_sum, num_tokens = 0.0, 0
    with eval_mode(model):
        for item in _drawn(dataset, keys, "example", pad_token_id, "eval loss", progress):
            if item["batch"] is None:
                continue
            out = model(**to_device(item["batch"], model_device(model)))
            loss_sum += float(out.loss_sum)
            num_tokens += out.num_tokens
    return loss_sum / max(num_tokens, 1)


def generate_records(model, tokenizer, dataset: MultimodalDataset, keys: list[BatchKey], max_new_tokens: int,
                     batch_size: int, progress: bool = False, group_by: list[str] = (), normalize=normalizer(),
                     num_beams: int = 1) -> list[dict]:
    """Answers (greedy, or beam search with num_beams > 1) to the samples of `keys`, as prediction records in
    sample order; each record's "groups" holds the row's `group_by` columns."""
    by_sample = {}
    for item in _drawn(dataset, keys, "prompt", tokenizer.pad_token_id, "generating", progress):
        prompts = item["batch"] or []
        answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           num_beams=num_beams)
        kept = {p.source for p in prompts}
        rows = [k for k in item["rows"] if dataset.label(k) in kept]
        for k, answer in zip(rows, answers):
            by_sample[k] = answer
    order = sorted(by_sample)
    records = prediction_records([dataset.sample(k) for k in order], [by_sample[k] for k in order], normalize)
    if group_by:
        for k, record in zip(order, records):
            record["groups"] = dataset.fields(k, group_by)
    return records


def reference(sample: Sample) -> str:
    """The text of the sample's last assistant turn."""
    answer = next(m for m in reversed(sample.messages) if m["role"] == "assistant")
    return "\n".join(p["text"] for p in answer["content"] if p["type"] == "text")


def prediction_records(samples: list[Sample], predictions: list[str], normalize=normalizer()) -> list[dict]:
    """One record per sample: source, reference, prediction, exact-match flag and word edit counts (after
    `normalize`)."""
    records = []
    for sample, prediction in zip(samples, predictions):
        ref = reference(sample)
        records.append({"source": sample.source, "reference": ref, "prediction": prediction,
                        "correct": normalize(ref) == normalize(prediction),
                        "errors": error_counts(ref, prediction, normalize)})
    return records


def write_predictions(records: list[dict], path: str | Path) -> Path:
    """Records as JSON lines (UTF-8, one object per line); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
