"""The committed example data: chat-form manifests, files present and decodable, answers
that match the source digits, and train/eval image sets (and eval voices) held apart."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IMAGE_SIZE = (32, 32)  # pixels (width, height) of every example image
SAMPLE_RATE = 16_000  # Hz
TASKS = {
    "vision_digits": {"digit", "parity", "plus_two", "count", "color", "describe"},
    "omni_digits": {"digit", "parity", "plus_two", "larger", "sum"},
}
PART_KEYS = {"image": "path", "audio": "path", "text": "text"}


def read_manifest(path: Path) -> list[dict]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            pytest.fail(f"{path}:{line_no}: not JSON: {e}")
    return rows


def read_splits(name: str) -> dict[str, list[dict]]:
    return {s: read_manifest(EXAMPLES / name / "data" / f"{s}.jsonl") for s in ("train", "eval")}


@pytest.fixture(scope="module", params=sorted(TASKS))
def example(request) -> tuple[str, Path, dict[str, list[dict]]]:
    """(name, data folder, {"train": rows, "eval": rows})."""
    return request.param, EXAMPLES / request.param / "data", read_splits(request.param)


def user_parts(row: dict) -> list[dict]:
    return row["messages"][0]["content"]


def media_paths(rows: list[dict], kind: str) -> set[str]:
    return {p["path"] for r in rows for p in user_parts(r) if p["type"] == kind}


def digit_indices(row: dict) -> list[int]:
    return row.get("digit_indices", [row["digit_index"]] if "digit_index" in row else [])


def test_rows_are_chat_form(example):
    name, _, splits = example
    for split, rows in splits.items():
        assert rows, f"{name}/{split}.jsonl is empty"
        for n, row in enumerate(rows, 1):
            where = f"{name}/{split}.jsonl:{n}"
            messages = row["messages"]
            assert [m["role"] for m in messages] == ["user", "assistant"], where
            parts = messages[0]["content"]
            assert isinstance(parts, list) and parts, where
            for part in parts:
                key = PART_KEYS[part["type"]]
                assert isinstance(part[key], str) and part[key].strip(), where
            assert any(p["type"] != "text" for p in parts), f"{where}: no media"
            answer = messages[1]["content"]
            assert isinstance(answer, str) and answer.strip() == answer and answer, where
            assert row["task"] in TASKS[name], where
        assert {r["task"] for r in rows} == TASKS[name], f"{name}/{split}: tasks missing"


def test_referenced_files_exist(example):
    name, data, splits = example
    for kind in ("image", "audio"):
        for split, rows in splits.items():
            missing = sorted(p for p in media_paths(rows, kind) if not (data / p).is_file())
            assert not missing, f"{name}/{split}: {len(missing)} missing, e.g. {missing[:3]}"


def test_images_open_at_expected_size(example):
    _, data, splits = example
    paths = sorted(media_paths(splits["train"] + splits["eval"], "image"))
    for path in random.Random(0).sample(paths, 40):
        with Image.open(data / path) as image:
            assert image.size == IMAGE_SIZE, path
            assert image.convert("RGB").getextrema() != ((255, 255),) * 3, f"{path} is blank"


def test_audio_decodes_at_16khz():
    splits, data = read_splits("omni_digits"), EXAMPLES / "omni_digits" / "data"
    paths = sorted(media_paths(splits["train"] + splits["eval"], "audio"))
    assert paths, "omni_digits has no audio"
    for path in random.Random(0).sample(paths, 10):
        audio, rate = sf.read(data / path, dtype="float32")
        assert rate == SAMPLE_RATE and audio.ndim == 1, path
        assert 0.5 < len(audio) / rate < 5.0, f"{path}: {len(audio) / rate:.2f} s"
        assert np.abs(audio).max() > 0.1, f"{path} is near silent"


def test_train_and_eval_images_are_disjoint(example):
    name, _, splits = example
    train, evaluation = splits["train"], splits["eval"]
    shared = media_paths(train, "image") & media_paths(evaluation, "image")
    assert not shared, f"{name}: images in both splits, e.g. {sorted(shared)[:3]}"
    train_digits = {i for r in train for i in digit_indices(r)}
    eval_digits = {i for r in evaluation for i in digit_indices(r)}
    assert eval_digits and not train_digits & eval_digits, name


def test_eval_voices_are_held_out():
    splits = read_splits("omni_digits")
    voices = {s: {r["voice"] for r in rows if "voice" in r} for s, rows in splits.items()}
    assert voices["train"] and voices["eval"] and not voices["train"] & voices["eval"]
    eval_audio = media_paths(splits["eval"], "audio")
    assert not eval_audio & media_paths(splits["train"], "audio")


def expected_answer(row: dict, labels: np.ndarray) -> str | None:
    digits = [int(labels[i]) for i in digit_indices(row)]
    task = row["task"]
    if task == "digit":
        return str(digits[0])
    if task == "parity":
        return "even" if digits[0] % 2 == 0 else "odd"
    if task == "plus_two":
        return str(digits[0] + 2)
    if task == "larger":
        return str(max(digits))
    if task == "sum":
        return str(sum(digits))
    if task == "count":
        return str(len(row["shapes"]))
    return None  # color, describe: checked by the generator's own logic


def test_answers_and_pixels_match_source_digits(example):
    """Answers follow from the load_digits label; each image is its digit_index's pixels."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    name, data, splits = example
    rows = splits["train"] + splits["eval"]
    for n, row in enumerate(rows):
        expected = expected_answer(row, digits.target)
        if expected is not None:
            assert row["messages"][1]["content"] == expected, f"{name} row {n}: {row}"
        images = [p["path"] for p in user_parts(row) if p["type"] == "image"]
        if digit_indices(row):
            assert images == [f"images/digit_{i:04d}.png" for i in digit_indices(row)], row
    for row in random.Random(1).sample([r for r in rows if "digit_index" in r], 20):
        path = data / user_parts(row)[0]["path"]
        with Image.open(path) as image:
            ink = 255.0 - np.asarray(image.convert("L"), dtype=np.float64)[::4, ::4]  # (8, 8)
        source = digits.images[row["digit_index"]]  # (8, 8) in 0..16
        assert np.corrcoef(ink.ravel(), source.ravel())[0, 1] > 0.99, path
