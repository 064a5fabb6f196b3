"""The committed spoken-digits data of the speech example is complete and well formed.

Every referenced file must exist; a fixed sample of them is decoded (decoding all takes
too long for a unit test).
"""

import json
import random
from pathlib import Path

import pytest
import soundfile as sf

DATA_DIR = Path(__file__).resolve().parents[2] / "examples" / "speech_digits" / "data"
SPLITS = ("train", "train_all", "eval")  # train: the espeak-ng part (the main job); train_all: every part
SAMPLE_RATE = 16000  # Hz
DIGIT_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
MIN_DIGITS, MAX_DIGITS = 2, 6
N_DECODED = 25  # files decoded per split
MAX_DATA_BYTES = 10.5 * 2**20  # the whole folder, by file size (what git stores; the index cache aside)


def read_manifest(split: str) -> list[dict]:
    """Rows of data/<split>.jsonl; a bad line fails with its file and line number."""
    path = DATA_DIR / f"{split}.jsonl"
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            pytest.fail(f"{path}:{n}: not valid JSON ({e})")
        assert isinstance(row.get("audio"), str) and isinstance(row.get("text"), str), f"{path}:{n}: {row}"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    return {split: read_manifest(split) for split in SPLITS}


def test_splits_are_not_empty(manifests):
    assert len(manifests["train"]) >= 1000
    assert len(manifests["eval"]) >= 100


@pytest.mark.parametrize("split", SPLITS)
def test_every_audio_file_exists(manifests, split):
    missing = [r["audio"] for r in manifests[split] if not (DATA_DIR / r["audio"]).is_file()]
    assert not missing, f"{len(missing)} missing in {split}.jsonl, e.g. {missing[:3]}"


@pytest.mark.parametrize("split", SPLITS)
def test_sampled_audio_decodes_16k_mono(manifests, split):
    rows = random.Random(0).sample(manifests[split], N_DECODED)
    for row in rows:
        audio, sr = sf.read(DATA_DIR / row["audio"], dtype="float32", always_2d=True)
        assert sr == SAMPLE_RATE, row["audio"]
        assert audio.shape[1] == 1, row["audio"]  # (samples, channels)
        assert audio.shape[0] > 0 and abs(audio).max() > 0, row["audio"]


@pytest.mark.parametrize("split", SPLITS)
def test_transcripts_are_digit_words(manifests, split):
    for row in manifests[split]:
        words = row["text"].split()
        assert MIN_DIGITS <= len(words) <= MAX_DIGITS, row
        assert set(words) <= DIGIT_WORDS, row


def test_eval_voices_are_unseen_in_training(manifests):
    train_voices = {r["voice"] for r in manifests["train_all"]}
    eval_voices = {r["voice"] for r in manifests["eval"]}
    assert eval_voices and train_voices
    assert not train_voices & eval_voices


def test_both_kinds_of_speaker_are_in_both_splits_and_the_real_eval_speaker_is_unheard(manifests):
    kinds = {split: {r["kind"] for r in rows} for split, rows in manifests.items()}
    assert kinds == {"train": {"synthetic"}, "train_all": {"synthetic", "real"}, "eval": {"synthetic", "real"}}
    real = {split: {r["voice"] for r in rows if r["kind"] == "real"} for split, rows in manifests.items()}
    assert real == {"train": set(), "train_all": {"real:jackson", "real:nicolas", "real:george"},
                    "eval": {"real:lucas"}}
    assert manifests["train"] == [r for r in manifests["train_all"] if r["audio"].startswith("train/")]


def test_the_real_recordings_keep_their_licence():
    text = (DATA_DIR.parent / "DATA.md").read_text()
    assert "Creative Commons Attribution-ShareAlike 4.0" in text and "Free Spoken Digit Dataset" in text


def test_data_folder_fits_budget():
    size = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file() and ".mmtune_index" not in p.parts)
    assert size <= MAX_DATA_BYTES, f"{DATA_DIR} holds {size} bytes"
