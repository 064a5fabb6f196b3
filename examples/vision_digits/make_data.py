"""Make the vision_digits example data: real handwritten digits and drawn shape scenes.

Run from the repository root:

    python examples/vision_digits/make_data.py

Writes `data/images/*.png`, `data/train.jsonl`, `data/eval.jsonl` and `data/eval_digit.jsonl`
(the eval rows of task "digit") beside this file (chat-form manifests, paths relative to
`data/`); DATA.md says what is in them. Needs scikit-learn (`pip install -e .[examples]`).
The same seed gives the same bytes.

`examples/omni_digits/make_data.py` imports the digit functions of this file.
"""

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SEED = 0
IMAGE_SIZE = 32  # pixels (square), for digits and scenes: the 8x8 digits upscaled 4x
DIGIT_LEVELS = 16  # load_digits ink levels run 0 (paper) .. 16 (full ink)
N_EVAL_DIGITS = 297  # of the 1797 load_digits images; the other 1500 are train
N_TRAIN_SCENES = 400
N_EVAL_SCENES = 100
SUPERSAMPLE = 4  # scenes are drawn at 4x IMAGE_SIZE and downsampled, for smooth edges

DIGIT_QUESTIONS = {
    "digit": [
        "Which digit is written here?",
        "What digit is this?",
        "What number is shown in the image?",
        "Read the handwritten digit.",
    ],
    "parity": [
        "Is it even or odd?",
        "Is the digit even or odd?",
        "Is this number odd or even?",
    ],
    "plus_two": [
        "What is the digit plus two?",
        "Add two to the digit. What do you get?",
        "What is this number plus 2?",
    ],
}
SCENE_QUESTIONS = {
    "count": [
        "How many shapes are there?",
        "How many shapes are in the picture?",
        "Count the shapes.",
    ],
    "color": [
        "What color is the {shape}?",
        "Which color is the {shape}?",
        "What is the color of the {shape}?",
    ],
    "describe": [
        "Describe the image.",
        "What do you see?",
        "Describe the shapes in the picture.",
    ],
}

SHAPES = ("circle", "square", "triangle")  # also the order of groups in a description
COLORS = {  # name -> RGB; also the order of groups in a description
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
}
BACKGROUNDS = ((255, 255, 255), (190, 190, 190))  # white, light gray
NUMBER_WORDS = ("zero", "one", "two", "three", "four")


# ---- manifests -------------------------------------------------------------------------


def image_part(path: str) -> dict:
    return {"type": "image", "path": path}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def chat_row(parts: list[dict], answer: str, task: str, **extra) -> dict:
    """One single-turn chat row: the user's parts, the assistant's answer, and extra keys."""
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "task": task, **extra}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def print_counts(splits: dict[str, list[dict]]) -> None:
    for name, rows in splits.items():
        tasks = [r["task"] for r in rows]
        print(f"{name}: {len(rows)} rows", {t: tasks.count(t) for t in dict.fromkeys(tasks)})


# ---- handwritten digits ----------------------------------------------------------------


def load_digit_source() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's load_digits: pixels (1797, 8, 8) float in 0..16, labels (1797,) int."""
    from sklearn.datasets import load_digits  # optional dependency: the `examples` extra

    digits = load_digits()
    return digits.images, digits.target.astype(int)


def digit_image(pixels: np.ndarray, size: int = IMAGE_SIZE) -> Image.Image:
    """(8, 8) ink levels 0..16 -> size x size 8-bit grayscale ("L"), dark ink on white paper.

    Nearest-neighbour upscaling: every source pixel becomes a (size/8)^2 block, so the
    image holds exactly the source's information (and compresses to ~200 bytes of PNG).
    """
    gray = 255 - np.round(pixels * (255 / DIGIT_LEVELS))  # 0 ink -> 255 white, 16 -> 0 black
    image = Image.fromarray(gray.astype(np.uint8), mode="L")
    return image.resize((size, size), Image.Resampling.NEAREST)


def split_digits(n: int, n_eval: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices 0..n-1 into sorted (train, eval) by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def digit_path(index: int) -> str:
    return f"images/digit_{index:04d}.png"


def save_digit_images(indices, pixels: np.ndarray, data_dir: Path) -> None:
    for index in tqdm(sorted(set(int(i) for i in indices)), desc="digit images"):
        digit_image(pixels[index]).save(data_dir / digit_path(index), optimize=True)


def digit_answer(task: str, label: int) -> str:
    if task == "digit":
        return str(label)
    if task == "parity":
        return "even" if label % 2 == 0 else "odd"
    if task == "plus_two":
        return str(label + 2)
    raise ValueError(f"unknown digit task {task!r}; expected one of {sorted(DIGIT_QUESTIONS)}")


def digit_row(index: int, label: int, task: str, rng: np.random.Generator) -> dict:
    question = str(rng.choice(DIGIT_QUESTIONS[task]))
    parts = [image_part(digit_path(index)), text_part(question)]
    return chat_row(parts, digit_answer(task, label), task, digit_index=index)


def digit_rows(indices, labels, rng: np.random.Generator, train: bool) -> list[dict]:
    """Train: 1-3 distinct questions per image. Eval: "digit" plus parity or plus_two, in turn."""
    tasks = list(DIGIT_QUESTIONS)
    rows = []
    for k, index in enumerate(int(i) for i in indices):
        if train:
            chosen = sorted(rng.choice(len(tasks), size=rng.integers(1, 4), replace=False))
            image_tasks = [tasks[t] for t in chosen]
        else:
            image_tasks = ["digit", ("parity", "plus_two")[k % 2]]
        rows += [digit_row(index, labels[index], task, rng) for task in image_tasks]
    return rows


# ---- shape scenes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # one of COLORS
    box: tuple[int, int, int, int]  # left, top, right, bottom in IMAGE_SIZE pixels

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def random_scene(rng: np.random.Generator, size: int = IMAGE_SIZE) -> list[Shape]:
    """1-4 shapes, each in its own quadrant of the image, so that none overlap."""
    cell = size // 2
    shapes = []
    for quadrant in rng.permutation(4)[: rng.integers(1, 5)]:
        side = int(rng.integers(cell * 9 // 16, cell * 14 // 16 + 1))  # 9..14 px at 32
        left = (quadrant % 2) * cell + int(rng.integers(1, cell - side))
        top = (quadrant // 2) * cell + int(rng.integers(1, cell - side))
        kind, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
        shapes.append(Shape(kind, color, (left, top, left + side, top + side)))
    return shapes


def draw_scene(shapes: list[Shape], background: tuple, size: int = IMAGE_SIZE) -> Image.Image:
    big = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), background)
    draw = ImageDraw.Draw(big)
    for shape in shapes:
        left, top, right, bottom = (v * SUPERSAMPLE for v in shape.box)
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:  # triangle, apex up
            draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    return big.resize((size, size), Image.Resampling.BOX)


def describe(shapes: list[Shape]) -> str:
    """Canonical description: groups by shape (SHAPES order), then color (COLORS order).

    e.g. "two red circles and one blue square"; "one green triangle".
    """
    groups = []
    for kind in SHAPES:
        for color in COLORS:
            n = sum(1 for s in shapes if s.kind == kind and s.color == color)
            if n:
                groups.append(f"{NUMBER_WORDS[n]} {color} {kind}{'s' if n > 1 else ''}")
    return groups[0] if len(groups) == 1 else ", ".join(groups[:-1]) + " and " + groups[-1]


def scene_questions(shapes: list[Shape], rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(task, question, answer) for a scene: count, describe, and the color of one shape
    whose kind appears exactly once (no color question when no kind is unique)."""
    pick = lambda task: str(rng.choice(SCENE_QUESTIONS[task]))  # noqa: E731
    out = [("count", pick("count"), str(len(shapes)))]
    unique = [s for s in shapes if sum(t.kind == s.kind for t in shapes) == 1]
    if unique:
        shape = unique[int(rng.integers(len(unique)))]
        out.append(("color", pick("color").format(shape=shape.kind), shape.color))
    out.append(("describe", pick("describe"), describe(shapes)))
    return out


def scene_rows(first: int, count: int, rng: np.random.Generator, data_dir: Path) -> list[dict]:
    """Draw scenes first..first+count-1, save their PNGs, return their rows."""
    rows = []
    for index in tqdm(range(first, first + count), desc="scenes"):
        shapes = random_scene(rng)
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        path = f"images/scene_{index:04d}.png"
        draw_scene(shapes, background).save(data_dir / path, optimize=True)
        names = [s.name for s in shapes]
        for task, question, answer in scene_questions(shapes, rng):
            parts = [image_part(path), text_part(question)]
            rows.append(chat_row(parts, answer, task, scene_index=index, shapes=names))
    return rows


# ---- main ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    args = parser.parse_args()
    shutil.rmtree(args.out / "images", ignore_errors=True)
    (args.out / "images").mkdir(parents=True)

    pixels, labels = load_digit_source()
    train_idx, eval_idx = split_digits(len(labels), N_EVAL_DIGITS)
    save_digit_images(range(len(labels)), pixels, args.out)

    rng = np.random.default_rng(SEED)
    train = digit_rows(train_idx, labels, rng, train=True)
    train += scene_rows(0, N_TRAIN_SCENES, rng, args.out)
    rng.shuffle(train)
    evaluation = digit_rows(eval_idx, labels, rng, train=False)
    evaluation += scene_rows(N_TRAIN_SCENES, N_EVAL_SCENES, rng, args.out)

    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "eval.jsonl", evaluation)
    write_jsonl(args.out / "eval_digit.jsonl", [r for r in evaluation if r["task"] == "digit"])
    print_counts({"train": train, "eval": evaluation})


if __name__ == "__main__":
    main()
