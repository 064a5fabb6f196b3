import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from tests.tiny import tiny_model_config
from mmtune.collators.padded import collate_padded
from mmtune.config import DataConfig
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import MediaSpec
from mmtune.data.loader import encode_all
from mmtune.eval.metrics import cer, error_counts, wer
from mmtune.eval.run import evaluate, write_predictions
from mmtune.infer.generate import Predictor, generate
from mmtune.model.build import build_model
from mmtune.model.checkpoint import load_checkpoint, save_checkpoint


def write_manifest(folder, rows):
    path = folder / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def eval_dataset(folder, tokenizer, model_cfg, rows, train=False):
    spec = MediaSpec.from_config(model_cfg, DataConfig())
    return MultimodalDataset.load(write_manifest(folder, rows), tokenizer, spec, DataConfig(num_workers=0),
                                  train=train, progress=False)


def examples(dataset):
    return encode_all(dataset)[0]


def samples(dataset):
    return [dataset.sample(k) for k in range(len(dataset))]


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory, tokenizer_dir):
    """A tiny audio + vision checkpoint loaded as a user loads it, and an eval set with clips and images."""
    folder = tmp_path_factory.mktemp("eval")
    cfg = tiny_model_config(tokenizer_dir)
    save_checkpoint(*build_model(cfg), cfg, folder / "final")
    model, tokenizer, cfg = load_checkpoint(folder / "final")
    for k, seconds in enumerate((0.3, 0.6, 1.0)):
        t = np.arange(int(16000 * seconds)) / 16000
        sf.write(str(folder / f"{k}.wav"), (0.5 * np.sin(2 * np.pi * 300 * (k + 1) * t)).astype(np.float32), 16000)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(str(folder / "red.png"))
    rows = [{"audio": "0.wav", "text": "three one four"}, {"audio": "1.wav", "text": "zero"},
            {"audio": "2.wav", "text": "seven eight nine two"},
            {"messages": [{"role": "user", "content": [{"type": "image", "path": "red.png"},
                                                       {"type": "text", "text": "What is in the image?"}]},
                          {"role": "assistant", "content": "A red circle."}]}]
    return model, tokenizer, eval_dataset(folder, tokenizer, cfg, rows)


def test_loss_is_summed_token_loss_over_supervised_tokens(multimodal):
    model, tokenizer, dataset = multimodal
    results, records = evaluate(model, tokenizer, dataset, metrics=("loss",), batch_size=3, progress=False)
    with torch.no_grad():
        out = model(**collate_padded(examples(dataset), tokenizer.pad_token_id))
    assert results["loss"] == pytest.approx(float(out.loss_sum) / out.num_tokens, rel=1e-5)
    assert results["num_samples"] == 4 and records == []
    assert evaluate(model, tokenizer, dataset, metrics=("loss",), max_samples=2, progress=False)[0]["num_samples"] == 2


def test_generation_metrics_agree_with_the_records(multimodal, tmp_path):
    model, tokenizer, dataset = multimodal
    model.train()
    results, records = evaluate(model, tokenizer, dataset, max_new_tokens=4, batch_size=2, progress=False)
    assert model.training  # the caller's mode is restored
    refs, preds = [r["reference"] for r in records], [r["prediction"] for r in records]
    assert refs == ["three one four", "zero", "seven eight nine two", "A red circle."]
    assert [r["source"] for r in records] == [s.source for s in samples(dataset)]
    assert preds == generate(model, tokenizer, [dataset.encoder.prompt(s) for s in samples(dataset)], max_new_tokens=4)
    assert results["wer"] == wer(refs, preds) and results["cer"] == cer(refs, preds)
    assert results["accuracy"] == sum(r["correct"] for r in records) / 4
    assert all(r["errors"] == error_counts(r["reference"], r["prediction"]) for r in records)
    assert set(results) == {"loss", "wer", "cer", "accuracy", "num_samples"}
    path = write_predictions(records, tmp_path / "out" / "predictions.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == records


def test_bad_arguments_are_refused(multimodal):
    model, tokenizer, dataset = multimodal
    with pytest.raises(ValueError, match="unknown eval metric.*'bleu'.*choose from loss, wer"):
        evaluate(model, tokenizer, dataset, metrics=("loss", "bleu"))


def test_a_training_dataset_is_refused(multimodal, tmp_path, tokenizer_dir):
    model, tokenizer, _ = multimodal
    cfg = tiny_model_config(tokenizer_dir)
    Image.new("RGB", (32, 32)).save(str(tmp_path / "x.png"))
    rows = [{"messages": [{"role": "user", "content": [{"type": "image", "path": "x.png"}]},
                          {"role": "assistant", "content": "black"}]}]
    with pytest.raises(ValueError, match="train=False"):
        evaluate(model, tokenizer, eval_dataset(tmp_path, tokenizer, cfg, rows, train=True))


def train_to_answer_seven(tokenizer_dir, folder, steps=60):
    """A tiny text-only LLM trained on every prompt -> "seven", saved as a checkpoint."""
    cfg = tiny_model_config(tokenizer_dir, audio=False, vision=False)
    model, tokenizer = build_model(cfg)
    questions = ["Which digit is written here?", "Is it even or odd?", "three one four", "What is in the image?",
                 "zero", "Transcribe the audio."]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "seven"}]}
            for q in questions]
    batch = collate_padded(examples(eval_dataset(folder, tokenizer, cfg, rows)), tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_checkpoint(model, tokenizer, cfg, folder / "final")


def test_trained_model_answers_seven_end_to_end(tokenizer_dir, tmp_path):
    predictor = Predictor.from_checkpoint(str(train_to_answer_seven(tokenizer_dir, tmp_path)), device="cpu")
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "seven"}]}
            for q in ("nine two six", "What is in the image?", "Is it even or odd? even odd")]
    dataset = eval_dataset(tmp_path, predictor.tokenizer, predictor.model_cfg, rows)
    prompts = [dataset.encoder.prompt(s) for s in samples(dataset)]
    assert generate(predictor.model, predictor.tokenizer, prompts, batch_size=2) == ["seven"] * 3
    assert predictor.answer("zero seven eight") == "seven"
    results, records = evaluate(predictor.model, predictor.tokenizer, dataset, progress=False)
    assert results["accuracy"] == 1.0 and results["wer"] == 0.0 and results["loss"] < 0.5
    assert all(r["correct"] and r["prediction"] == "seven" for r in records)


def test_metrics_per_group_come_from_the_rows_columns(tmp_path, multimodal, tokenizer_dir):
    from mmtune.eval.run import group_scores

    records = [{"reference": "one two", "prediction": "one two", "groups": {"voice": "a", "speaker": "s1"}},
               {"reference": "three four", "prediction": "three", "groups": {"voice": "b", "speaker": "s1"}},
               {"reference": "five", "prediction": "six", "groups": {"voice": "b"}}]
    groups = group_scores(records, ["wer", "accuracy", "loss"], ["voice", "speaker", "task"])
    assert groups == {"voice": {"a": {"num_samples": 1, "wer": 0.0, "accuracy": 1.0},
                                "b": {"num_samples": 2, "wer": 2 / 3, "accuracy": 0.0}},
                      "speaker": {"s1": {"num_samples": 2, "wer": 0.25, "accuracy": 0.5}}}
    # from the manifest, as `mmtune eval` and training see them: rows with a voice column are grouped by it
    model, tokenizer, _ = multimodal
    folder = tmp_path / "grouped"
    folder.mkdir()
    for k in range(3):
        sf.write(str(folder / f"{k}.wav"), np.zeros(4000, dtype=np.float32), 16000)
    rows = [{"audio": f"{k}.wav", "text": "zero", "voice": v} for k, v in enumerate(["x", "y", "x"])]
    dataset = eval_dataset(folder, tokenizer, tiny_model_config(tokenizer_dir), rows)
    metrics, records = evaluate(model, tokenizer, dataset, ("wer",), max_new_tokens=2, progress=False)
    assert [r["groups"] for r in records] == [{"voice": "x"}, {"voice": "y"}, {"voice": "x"}]
    assert {v: g["num_samples"] for v, g in metrics["groups"]["voice"].items()} == {"x": 2, "y": 1}
    assert "groups" not in evaluate(model, tokenizer, dataset, ("wer",), max_new_tokens=2, progress=False,
                                    group_by=[])[0]
