"""An evaluation run: the loss over an eval set, then generation scored against the references.

    metrics, records = evaluate(model, tokenizer, eval_dataset, metrics=("loss", "wer", "accuracy"))
    metrics   # {"loss": 0.41, "wer": 0.12, "accuracy": 0.8, "num_samples": 200}
    write_predictions(records, "runs/digits/predictions.jsonl")

The loss is summed token cross entropy over all supervised tokens / their count (not a mean of
batch means). Generation prompts are the samples without their last assistant turn; that turn's
text is the reference. WER/CER/accuracy come from `mmtune.eval.metrics` (normalized text).
"""

import json
from pathlib import Path

from tqdm.auto import tqdm

from mmtune.collators.padded import collate_padded
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.formats import Sample
from mmtune.eval.metrics import cer, error_counts, exact_match, normalize_text, wer
from mmtune.data.example import to_device
from mmtune.infer.generate import eval_mode, generate, length_batches, model_device

METRICS = ("loss", "wer", "cer", "accuracy")
GENERATION_METRICS = {"wer": wer, "cer": cer, "accuracy": exact_match}


def evaluate(model, tokenizer, dataset: MultimodalDataset, metrics=("loss", "wer", "cer", "accuracy"),
             max_new_tokens: int = 32, batch_size: int = 16, max_samples: int | None = None,
             progress: bool = True) -> tuple[dict, list[dict]]:
    """-> ({metric: value, "num_samples": N}, per-sample records; empty when no generation metric)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown eval metric(s) {unknown}; choose from {', '.join(METRICS)}")
    if dataset.encoder.train:
        raise ValueError("evaluate needs a dataset built with train=False (no augmentation)")
    n = len(dataset.examples) if max_samples is None else min(max_samples, len(dataset.examples))
    results: dict = {}
    if "loss" in metrics:
        results["loss"] = eval_loss(model, dataset.examples[:n], tokenizer.pad_token_id, batch_size, progress)
    records = []
    if any(m in GENERATION_METRICS for m in metrics):
        samples = dataset.samples[:n]
        prompts = [dataset.encoder.prompt(s) for s in samples]
        predictions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, progress=progress)
        records = prediction_records(samples, predictions)
        references = [r["reference"] for r in records]
        for name in (m for m in metrics if m in GENERATION_METRICS):
            results[name] = GENERATION_METRICS[name](references, predictions)
    results["num_samples"] = n
    return results, records


def eval_loss(model, examples, pad_token_id: int, batch_size: int = 16, progress: bool = False) -> float:
    """Summed token loss over every supervised token / their count, from padded batches, no grad."""
    loss_sum, num_tokens = 0.0, 0
    batches = length_batches(examples, batch_size)
    with eval_mode(model):
        for indices in tqdm(batches, desc="eval loss", unit="batch", disable=not progress, leave=False):
            batch = collate_padded([examples[i] for i in indices], pad_token_id)
            out = model(**to_device(batch, model_device(model)))
            loss_sum += float(out.loss_sum)
            num_tokens += out.num_tokens
    return loss_sum / num_tokens


def reference(sample: Sample) -> str:
    """The text of the sample's last assistant turn."""
    answer = next(m for m in reversed(sample.messages) if m["role"] == "assistant")
    return "\n".join(p["text"] for p in answer["content"] if p["type"] == "text")


def prediction_records(samples: list[Sample], predictions: list[str]) -> list[dict]:
    """One record per sample: source, reference, prediction, exact-match flag and word edit counts."""
    records = []
    for sample, prediction in zip(samples, predictions):
        ref = reference(sample)
        records.append({"source": sample.source, "reference": ref, "prediction": prediction,
                        "correct": normalize_text(ref) == normalize_text(prediction),
                        "errors": error_counts(ref, prediction)})
    return records


def write_predictions(records: list[dict], path: str | Path) -> Path:
    """Records as JSON lines (UTF-8, one object per line); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
