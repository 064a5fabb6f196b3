"""Make the omni_digits example data: handwritten digits with spoken questions, and digit pairs.

Run from the repository root:

    python examples/omni_digits/make_data.py

Writes `data/images/*.png`, `data/audio/*.flac`, `data/train.jsonl` and `data/eval.jsonl`
beside this file; DATA.md says what is in them. Needs scikit-learn and the espeak-ng
program (`apt-get install espeak-ng`). The same seed gives the same bytes.

Digits come from `examples/vision_digits/make_data.py` (same images, same train/eval
split); its functions are imported, not copied.
"""

import argparse
import importlib.util
import io
import shutil
import subprocess
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from tqdm import tqdm


def _load_vision_digits():
    """examples/ is not a package: load the sibling example's make_data.py by its path."""
    path = Path(__file__).resolve().parents[1] / "vision_digits" / "make_data.py"
    spec = importlib.util.spec_from_file_location("vision_digits_make_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vd = _load_vision_digits()

SEED = 1
SAMPLE_RATE = 16_000  # Hz, what the audio encoders take
TRIM_DB = 40  # dB below peak: leading/trailing espeak silence quieter than this is cut
SPEEDS_WPM = (140, 180)  # espeak-ng speaking rates, words per minute
SPOKEN = {  # task -> the question as spoken
    "digit": "which digit is this",
    "parity": "is it even or odd",
    "plus_two": "what is the digit plus two",
}
SPOKEN_INSTRUCTION = "Answer the spoken question."
# espeak-ng voice = accent + "+" variant. The eval voices use variants never heard in train.
TRAIN_VOICES = (
    "en",
    "en-us+m3",
    "en-gb-scotland+f2",
    "en-029+m1",
    "en-gb-x-rp+f4",
    "en-us-nyc+m4",
    "en-gb-x-gbclan+f1",
    "en-gb-x-gbcwmd+Michael",
    "en-us+klatt",
    "en+Annie",
)
EVAL_VOICES = ("en-us+f5", "en-gb-x-rp+Andy", "en-029+f3")
PAIR_QUESTIONS = {
    "larger": [
        "Which digit is larger?",
        "Which of the two digits is bigger?",
        "Which is the larger of the two digits?",
    ],
    "sum": [
        "What is the sum of the two digits?",
        "Add the two digits. What is the total?",
        "What do the two digits add up to?",
    ],
}
# rows per task (spoken rows use one image, pair rows two)
TRAIN_ROWS = {"digit": 350, "parity": 350, "plus_two": 350, "larger": 225, "sum": 225}
EVAL_ROWS = {"digit": 40, "parity": 40, "plus_two": 40, "larger": 40, "sum": 40}


# ---- spoken questions ------------------------------------------------------------------


def speak(text: str, voice: str, speed_wpm: int) -> np.ndarray:
    """espeak-ng speech -> (samples,) float32 mono at SAMPLE_RATE, edge silence trimmed."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed_wpm), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")  # espeak-ng: 22050 Hz mono
    audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE)
    return librosa.effects.trim(audio, top_db=TRIM_DB)[0]


def audio_path(task: str, voice: str, speed_wpm: int) -> str:
    return f"audio/{task}-{voice.replace('+', '_')}-{speed_wpm}.flac"


def synthesize_all(voices, data_dir: Path) -> None:
    """Every (question, voice, speed) once, as 16-bit FLAC; rows share these files."""
    combos = [(t, v, s) for t in SPOKEN for v in voices for s in SPEEDS_WPM]
    for task, voice, speed in tqdm(combos, desc="espeak-ng"):
        audio = speak(SPOKEN[task], voice, speed)
        sf.write(data_dir / audio_path(task, voice, speed), audio, SAMPLE_RATE, subtype="PCM_16")


def spoken_row(index: int, label: int, task: str, voice: str, speed: int) -> dict:
    parts = [
        vd.image_part(vd.digit_path(index)),
        {"type": "audio", "path": audio_path(task, voice, speed)},
        vd.text_part(SPOKEN_INSTRUCTION),
    ]
    answer = vd.digit_answer(task, label)
    return vd.chat_row(parts, answer, task, digit_index=index, voice=voice, speed_wpm=speed)


def spoken_rows(indices, labels, counts: dict, voices, rng: np.random.Generator) -> list[dict]:
    """counts[task] rows per spoken task, each on a different image; voice x speed cycle."""
    n = sum(counts[t] for t in SPOKEN)
    images = rng.choice(indices, size=n, replace=False)
    combos = [(v, s) for v in voices for s in SPEEDS_WPM]
    tasks = [t for t in SPOKEN for _ in range(counts[t])]
    rows = []
    for k, (index, task) in enumerate(zip(images, tasks)):
        voice, speed = combos[k % len(combos)]
        rows.append(spoken_row(int(index), labels[index], task, voice, speed))
    return rows


# ---- digit pairs -----------------------------------------------------------------------


def pair_answer(task: str, a: int, b: int) -> str:
    return str(max(a, b)) if task == "larger" else str(a + b)


def pair_rows(indices, labels, counts: dict, rng: np.random.Generator) -> list[dict]:
    """Two images and a text question; "larger" pairs never show the same digit twice."""
    rows = []
    for task in PAIR_QUESTIONS:
        for _ in range(counts[task]):
            a, b = (int(i) for i in rng.choice(indices, size=2, replace=False))
            while task == "larger" and labels[a] == labels[b]:
                b = int(rng.choice(indices))
            question = str(rng.choice(PAIR_QUESTIONS[task]))
            parts = [
                vd.image_part(vd.digit_path(a)),
                vd.image_part(vd.digit_path(b)),
                vd.text_part(question),
            ]
            answer = pair_answer(task, labels[a], labels[b])
            rows.append(vd.chat_row(parts, answer, task, digit_indices=[a, b]))
    return rows


# ---- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: install it (apt-get install espeak-ng)")
    for folder in ("images", "audio"):
        shutil.rmtree(args.out / folder, ignore_errors=True)
        (args.out / folder).mkdir(parents=True)

    pixels, labels = vd.load_digit_source()
    train_idx, eval_idx = vd.split_digits(len(labels), vd.N_EVAL_DIGITS)
    synthesize_all(TRAIN_VOICES + EVAL_VOICES, args.out)

    rng = np.random.default_rng(SEED)
    train = spoken_rows(train_idx, labels, TRAIN_ROWS, TRAIN_VOICES, rng)
    train += pair_rows(train_idx, labels, TRAIN_ROWS, rng)
    rng.shuffle(train)
    evaluation = spoken_rows(eval_idx, labels, EVAL_ROWS, EVAL_VOICES, rng)
    evaluation += pair_rows(eval_idx, labels, EVAL_ROWS, rng)

    rows = train + evaluation
    used = [i for r in rows for i in r.get("digit_indices", [r.get("digit_index")])]
    vd.save_digit_images(used, pixels, args.out)
    vd.write_jsonl(args.out / "train.jsonl", train)
    vd.write_jsonl(args.out / "eval.jsonl", evaluation)
    vd.print_counts({"train": train, "eval": evaluation})


if __name__ == "__main__":
    main()
