"""MultimodalDataset from a real manifest, drawn as training draws it (index, then per-draw encoding):
media files on disk, labels, placeholder counts, the bad-input policy (`on_bad_sample: error | skip`)
with one asserted message per kind of bad row, whether the index (headers) or the draw (decoding)
finds it, over-length rows (drop / text truncation) and the stats it reports.

Not covered here: an image whose mode has no RGB conversion. No file Pillow writes decodes to
such a mode (every writable mode x format pair was tried; all load as RGB), so that message is
tested in tests/vision/test_io.py with a monkeypatched `Image.open` instead.
"""

import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmtune.audio.io import SAMPLE_RATE
from mmtune.config import DataConfig
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import MediaSpec
from mmtune.data.example import IGNORE_INDEX
from mmtune.data.loader import encode_all
from mmtune.errors import DataError
from mmtune.model.tokenizer import load_tokenizer
from mmtune.vision.io import MAX_PIXELS
from tests.tiny import tiny_model_config

# ----------------------------------------------------------------------------- media and rows (shared)

# A clip of n samples at 16 kHz is n // 160 mel frames (10 ms hop); Whisper's stride-2 conv gives
# (frames - 1) // 2 + 1 encoder frames; the tiny config stacks 2 of them per LLM token.
CLIPS = {"short.wav": (0.30, 8), "mid.wav": (0.42, 11), "long.wav": (0.55, 14)}  # seconds, LLM tokens
IMAGE_TOKENS = 16  # (32 / 8) ** 2 patches of the tiny CLIP
ANSWER = "three one four"


def write_wav(path, seconds: float, kind: str = "sine", seed: int = 0) -> Path:
    n = int(round(seconds * SAMPLE_RATE))
    if kind == "sine":
        wave = 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / SAMPLE_RATE)
    else:
        wave = 0.1 * np.random.default_rng(seed).standard_normal(n)
    sf.write(path, wave.astype(np.float32), SAMPLE_RATE)
    return Path(path)


def write_png(path, size=(32, 32), seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return Path(path)


def png_header(width: int, height: int) -> bytes:
    """A real PNG of a few dozen bytes whose IHDR claims width x height pixels (no pixel data)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def write_media(folder: Path) -> Path:
    """Good clips of three lengths (sine and noise) and three 32 x 32 PNGs in `folder`."""
    for k, (name, (seconds, _)) in enumerate(CLIPS.items()):
        write_wav(folder / name, seconds, "sine" if k % 2 == 0 else "noise", seed=k)
    for k, name in enumerate(("red.png", "green.png", "blue.png")):
        write_png(folder / name, seed=k)
    return folder


def write_manifest(folder: Path, rows, name: str = "manifest.jsonl") -> Path:
    """One line per row: a dict (JSON-encoded), a str or raw bytes (written as they are)."""
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows]
    path = folder / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def A(path):
    return {"type": "audio", "path": str(path)}


def I(path):  # noqa: E743
    return {"type": "image", "path": str(path)}


def T(text):
    return {"type": "text", "text": text}


def chat(*turns, system=None) -> dict:
    """chat([parts of user 1], "answer 1", [parts of user 2], "answer 2", ...) -> a chat row."""
    roles = ["user", "assistant"] * len(turns)
    messages = [{"role": role, "content": content} for role, content in zip(roles, turns)]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages}


def text_row(answer="odd"):
    return chat([T("Is it even or odd?")], answer)


# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def spec(tokenizer_dir):
    return MediaSpec.from_config(tiny_model_config(tokenizer_dir), DataConfig())


class Drawn(list):
    """The examples of one pass over a dataset, with what was skipped (by the index or when drawn)."""

    def __init__(self, dataset: MultimodalDataset):
        examples, drawn = encode_all(dataset)
        super().__init__(examples)
        self.dataset, self.drawn = dataset, drawn
        self.skipped = sorted(dataset.skipped + [DataError(s, r) for s, r in drawn.skipped.values()],
                              key=lambda e: int(e.source.rsplit(":", 1)[1]))
        self.lengths = dataset.lengths

    def stats(self) -> dict:
        return self.dataset.stats(self.drawn.skipped)


def encode(path, tokenizer, spec, **data) -> Drawn:
    data = DataConfig(**{"num_workers": 0, **data})
    return Drawn(MultimodalDataset.load(str(path), tokenizer, spec, data, train=False, progress=False))


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def runs(ids, token_id: int) -> list[tuple[int, int]]:
    """(start, length) of every run of `token_id` in ids."""
    ids = list(map(int, ids))
    out = []
    for t, x in enumerate(ids):
        if x == token_id and (t == 0 or ids[t - 1] != token_id):
            out.append([t, 0])
        if x == token_id:
            out[-1][1] += 1
    return [tuple(r) for r in out]


# ----------------------------------------------------------------------------- good rows


@pytest.mark.parametrize("train_on, answers", [("all", ["three one four", "zero seven eight"]),
                                               ("last", ["zero seven eight"])])
def test_supervised_ids_are_the_assistant_answers_through_the_data_path(tmp_path, tokenizer, spec, train_on, answers):
    write_media(tmp_path)
    row = chat([A(tmp_path / "short.wav"), T("Transcribe the audio.")], "three one four",
               [I(tmp_path / "red.png"), T("Which digit is written here?")], "zero seven eight", system="Be brief.")
    (example,) = encode(write_manifest(tmp_path, [row]), tokenizer, spec, train_on=train_on)
    supervised = example.labels[example.labels != IGNORE_INDEX].tolist()
    assert supervised == [t for a in answers for t in ids_of(tokenizer, a + "<|im_end|>")]
    assert supervised == example.input_ids[example.labels != IGNORE_INDEX].tolist()  # labels[t] is input_ids[t]


def test_placeholders_expand_to_the_encoder_token_counts(tmp_path, tokenizer, spec):
    write_media(tmp_path)
    rows = [chat([A(tmp_path / "short.wav"), A(tmp_path / "long.wav"), T("Transcribe the audio.")], ANSWER),
            chat([I(tmp_path / "red.png"), I(tmp_path / "green.png"), T("What is in the image?")], "A red circle.")]
    audio_row, image_row = encode(write_manifest(tmp_path, rows), tokenizer, spec)
    audio_id, image_id = (tokenizer.convert_tokens_to_ids(t) for t in ("<|audio|>", "<|image|>"))

    assert [n for _, n in runs(audio_row.input_ids, audio_id)] == [CLIPS["short.wav"][1], CLIPS["long.wav"][1]]
    assert [a.shape for a in audio_row.audio] == [(80, 30), (80, 55)]  # (n_mels, 10 ms frames)
    assert runs(audio_row.input_ids, image_id) == [] and audio_row.images == []

    assert [n for _, n in runs(image_row.input_ids, image_id)] == [IMAGE_TOKENS, IMAGE_TOKENS]
    assert [tuple(i.shape) for i in image_row.images] == [(1, 3, 32, 32)] * 2  # one view each (max_tiles 1)
    for example in (audio_row, image_row):
        placeholder = (example.input_ids == audio_id) | (example.input_ids == image_id)
        assert (example.labels[placeholder] == IGNORE_INDEX).all()  # media is never a target
    # the text around the runs is the template's rendering with one placeholder per medium
    text = tokenizer.apply_chat_template([{"role": "user", "content": "<|image|>\n<|image|>\nWhat is in the image?"},
                                          {"role": "assistant", "content": "A red circle."}], tokenize=False)
    collapsed = [t for k, t in enumerate(image_row.input_ids.tolist())
                 if not (t == image_id and image_row.input_ids[k - 1] == image_id)]
    assert collapsed == ids_of(tokenizer, text)


def test_stats_report_rows_media_and_the_supervised_fraction(tmp_path, tokenizer, spec):
    write_media(tmp_path)
    rows = [chat([A(tmp_path / "short.wav")], ANSWER), text_row(),
            chat([A(tmp_path / "mid.wav"), I(tmp_path / "red.png"), T("Is it even or odd?")], "even")]
    dataset = encode(write_manifest(tmp_path, rows), tokenizer, spec)
    stats = dataset.stats()
    tokens = sum(len(e) for e in dataset)
    supervised = sum(len(ids_of(tokenizer, a + "<|im_end|>")) for a in (ANSWER, "odd", "even"))
    assert stats == {"rows": 3, "skipped": 0, "skipped_by_reason": {}, "truncated": 0, "tokens": tokens,
                     "supervised_fraction": pytest.approx(supervised / tokens), "audio_clips": 2, "images": 1,
                     "audio_hours": pytest.approx((CLIPS["short.wav"][0] + CLIPS["mid.wav"][0]) / 3600)}
    assert 0 < stats["supervised_fraction"] < 0.5


def test_a_sample_with_no_supervised_token_is_an_error_naming_its_row(tmp_path, tokenizer_dir, spec):
    # A template that renders only user turns: the answer becomes no token at all.
    tokenizer = load_tokenizer(tokenizer_dir, chat_template=(
        "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>user\n{{ m['content'] }}<|im_end|>\n"
        "{% endif %}{% endfor %}"))
    path = write_manifest(tmp_path, [text_row(), text_row()])
    with pytest.raises(DataError) as info:
        encode(path, tokenizer, spec)
    assert str(info.value) == f"{path}:1: no supervised token: the assistant answers rendered to nothing"
    with pytest.raises(DataError, match=re.escape(f"{path}: no usable sample (2 skipped)")):
        encode(path, tokenizer, spec, on_bad_sample="skip")


# ----------------------------------------------------------------------------- bad rows, one kind each


@dataclass
class Bad:
    """A bad row (made in a folder that already holds good media) and the reason it must raise."""

    row: object  # folder -> row (dict, str or bytes)
    reason: object  # folder -> regex the whole reason must match
    data: dict = field(default_factory=dict)  # DataConfig keys


def _wav_then(folder, name, edit):
    path = folder / name
    edit(path)
    return chat([A(path), T("Transcribe the audio.")], ANSWER)


def _truncated_flac(path):
    write_wav(path.with_suffix(".full.flac"), 1.0)
    path.write_bytes(path.with_suffix(".full.flac").read_bytes()[:100])


def _with_value(value):
    def edit(path):
        wave = 0.5 * np.sin(np.arange(1600, dtype=np.float32))
        wave[10] = value
        sf.write(path, wave, SAMPLE_RATE, subtype="FLOAT")
    return edit


def _truncated_png(path):
    write_png(path, size=(64, 64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _image_then(folder, name, edit):
    path = folder / name
    edit(path)
    return chat([I(path), T("Which digit is written here?")], "zero")


def _q(folder, name):
    return re.escape(str(folder / name))


LATIN1_ROW = '{"messages": [{"role": "user", "content": "café?"}, {"role": "assistant", "content": "x"}]}'
LATIN1_ROW = LATIN1_ROW.encode("latin-1")

BAD = {
    "missing audio file": Bad(
        lambda f: chat([A(f / "nope.wav"), T("Transcribe the audio.")], ANSWER),
        lambda f: re.escape(f"audio file not found: {f / 'nope.wav'} (check the path; relative paths resolve "
                            "against the manifest's folder)")),
    "missing image file": Bad(
        lambda f: chat([I(f / "nope.png"), T("Which digit?")], "zero"),
        lambda f: re.escape(f"image file not found: {f / 'nope.png'}")),
    "truncated audio": Bad(
        lambda f: _wav_then(f, "cut.flac", _truncated_flac),
        lambda f: f"cannot decode audio {_q(f, 'cut.flac')}: .+ \\(re-encode it, .+, or drop the row\\)"),
    "corrupt audio": Bad(
        lambda f: _wav_then(f, "garbage.wav", lambda p: p.write_bytes(b"this is not audio at all " * 20)),
        lambda f: f"cannot decode audio {_q(f, 'garbage.wav')}: .*Format not recognised.*"),
    "zero-length audio": Bad(
        lambda f: _wav_then(f, "empty.wav", lambda p: sf.write(p, np.zeros(0, np.float32), SAMPLE_RATE)),
        lambda f: re.escape(f"audio file {f / 'empty.wav'} has no samples (replace the file or drop the row)")),
    "audio shorter than one frame": Bad(
        lambda f: _wav_then(f, "tiny.wav", lambda p: write_wav(p, 100 / SAMPLE_RATE)),
        lambda f: re.escape(f"audio file {f / 'tiny.wav'} is shorter than one 10 ms frame")),
    "audio longer than data.max_audio_seconds": Bad(
        lambda f: _wav_then(f, "long31.wav", lambda p: write_wav(p, 31.0)),
        lambda f: re.escape(f"audio file {f / 'long31.wav'} is 31.0 s long, over data.max_audio_seconds=20: "
                            "raise it (the clip is encoded in 30 s windows) or split the file"),
        dict(max_audio_seconds=20.0)),
    "NaN audio": Bad(
        lambda f: _wav_then(f, "nan.wav", _with_value(np.nan)),
        lambda f: re.escape(f"audio file {f / 'nan.wav'} contains NaN or Inf samples (re-export the file or drop "
                            "the row)")),
    "Inf audio": Bad(
        lambda f: _wav_then(f, "inf.wav", _with_value(np.inf)),
        lambda f: re.escape(f"audio file {f / 'inf.wav'} contains NaN or Inf samples (re-export the file or drop "
                            "the row)")),
    "truncated image": Bad(
        lambda f: _image_then(f, "cut.png", _truncated_png),
        lambda f: f"cannot decode image {_q(f, 'cut.png')}: image file is truncated.* \\(is the file truncated\\?\\)"),
    "decompression bomb": Bad(  # a real PNG whose header claims 70 M pixels, over the 64 M default limit
        lambda f: _image_then(f, "bomb.png", lambda p: p.write_bytes(png_header(10_000, 7_000))),
        lambda f: re.escape(f"image {f / 'bomb.png'} has 10000 x 7000 = 70000000 pixels, over the limit of "
                            f"{MAX_PIXELS}; resize it to at most {MAX_PIXELS} pixels (width x height) or drop "
                            f"the row")),
    "invalid JSON": Bad(
        lambda f: '{"messages": [{"role": "user", "content": "hi"},',
        lambda f: r"invalid JSON at column \d+: .+; each line must be one JSON object"),
    "non-UTF-8 text": Bad(  # Latin-1 "café": byte 0xE9 then '?', which cannot continue a UTF-8 sequence
        lambda f: LATIN1_ROW,
        lambda f: rf"line is not valid UTF-8 at byte {LATIN1_ROW.index(0xE9) + 1} \(invalid continuation byte\); "
                  "re-save the manifest as UTF-8"),
    "missing messages": Bad(
        lambda f: {"conversation": [{"role": "user", "content": "hi"}]},
        lambda f: re.escape("row has no 'messages' (keys: ['conversation']); accepted rows: ") + ".+"),
    "wrong role order": Bad(
        lambda f: {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"},
                                {"role": "assistant", "content": "x"}]},
        lambda f: re.escape("messages[1] has role 'user' where 'assistant' was expected; after optional system "
                            "messages, turns must alternate user, assistant, user, ... starting with user")),
    "no assistant turn": Bad(
        lambda f: {"messages": [{"role": "user", "content": [A(f / "short.wav"), T("Transcribe.")]}]},
        lambda f: re.escape("no assistant turn; add {\"role\": \"assistant\", \"content\": \"...\"} with the answer "
                            "to train on")),
    "placeholder in text without media": Bad(
        lambda f: chat([T("What is in <|image|> here?")], "A cat."),
        lambda f: re.escape("messages[0] text contains the placeholder '<|image|>'; put the media in the content "
                            "as ") + ".+"),
    "LLaVA image without <image> tag": Bad(
        lambda f: {"image": "red.png", "conversations": [{"from": "human", "value": "What is it?"},
                                                         {"from": "gpt", "value": "A red circle."}]},
        lambda f: re.escape("row has 1 image(s) but no '<image>' tag in any turn; put '<image>' in the human turn "
                            "where each image goes")),
    "over-length (drop)": Bad(
        lambda f: chat([I(f / "red.png"), I(f / "green.png"), T("What is in the image?")], "A red circle."),
        lambda f: r"over-length: \d+ tokens \(media included\) > data.max_length=50; raise max_length or shorten "
                  r"the sample",
        {"max_length": 50}),
    "over-length, text cut leaves no answer": Bad(
        lambda f: chat([I(f / "red.png"), I(f / "green.png"), T("What is in the image?")], "A red circle."),
        lambda f: r"over-length: \d+ tokens \(media included\) > data.max_length=50; raise max_length or shorten "
                  r"the sample \(truncating the text would leave no supervised token\)",
        {"max_length": 50, "truncation": "text"}),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_row_is_an_error_naming_its_line(tmp_path, tokenizer, spec, kind):
    bad = BAD[kind]
    path = write_manifest(write_media(tmp_path), [text_row(), bad.row(tmp_path), text_row()])
    with pytest.raises(DataError) as info:
        encode(path, tokenizer, spec, **bad.data)
    assert info.value.source == f"{path}:2"
    assert re.fullmatch(bad.reason(tmp_path), info.value.reason), info.value.reason
    assert str(info.value) == f"{path}:2: {info.value.reason}"


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_row_is_skipped_and_counted(tmp_path, tokenizer, spec, kind):
    bad = BAD[kind]
    path = write_manifest(write_media(tmp_path), [text_row("odd"), bad.row(tmp_path), text_row("even")])
    dataset = encode(path, tokenizer, spec, on_bad_sample="skip", **bad.data)
    assert [e.source for e in dataset] == [f"{path}:1", f"{path}:3"]
    assert [e.source for e in dataset.skipped] == [f"{path}:2"]
    assert re.fullmatch(bad.reason(tmp_path), dataset.skipped[0].reason)
    stats = dataset.stats()
    assert stats["rows"] == 2 and stats["skipped"] == 1 and sum(stats["skipped_by_reason"].values()) == 1


def test_skip_keeps_every_good_row_and_counts_every_bad_one_by_reason(tmp_path, tokenizer, spec):
    write_media(tmp_path)
    layout = [chat([A(tmp_path / "short.wav"), T("Transcribe the audio.")], ANSWER),
              "missing audio file", "zero-length audio",
              chat([I(tmp_path / "red.png"), T("Which digit is written here?")], "zero"),
              "truncated image", "invalid JSON",
              chat([A(tmp_path / "long.wav"), I(tmp_path / "blue.png"), T("Is it even or odd?")], "even"),
              "wrong role order", "decompression bomb", "NaN audio", text_row(), "non-UTF-8 text"]
    good_lines = [n for n, item in enumerate(layout, 1) if isinstance(item, dict)]
    kinds = {n: item for n, item in enumerate(layout, 1) if isinstance(item, str)}
    rows = [BAD[item].row(tmp_path) if isinstance(item, str) else item for item in layout]
    # two more unreadable clips: the same kind of failure, in different files
    rows += [_wav_then(tmp_path, name, _truncated_flac) for name in ("cut1.flac", "cut2.flac")]
    bad_lines = sorted(kinds) + [len(layout) + 1, len(layout) + 2]
    path = write_manifest(tmp_path, rows)

    dataset = encode(path, tokenizer, spec, on_bad_sample="skip")
    assert [e.source for e in dataset] == [f"{path}:{n}" for n in good_lines]
    assert sorted(int(e.source.rsplit(":", 1)[1]) for e in dataset.skipped) == bad_lines
    reasons = {int(e.source.rsplit(":", 1)[1]): e.reason for e in dataset.skipped}
    for n, kind in kinds.items():
        assert re.fullmatch(BAD[kind].reason(tmp_path), reasons[n]), (kind, reasons[n])
    stats = dataset.stats()
    assert (stats["rows"], stats["skipped"]) == (len(good_lines), len(kinds) + 2)
    assert sum(stats["skipped_by_reason"].values()) == len(kinds) + 2
    # a kind of problem is one key, whatever the file or the position in the line
    assert stats["skipped_by_reason"]["cannot decode audio <file>"] == 2
    assert all(str(tmp_path) not in reason for reason in stats["skipped_by_reason"])
    assert (stats["audio_clips"], stats["images"]) == (2, 2)


def test_error_policy_stops_at_the_first_bad_row(tmp_path, tokenizer, spec):
    write_media(tmp_path)
    empty_clip, broken_json = BAD["zero-length audio"].row(tmp_path), BAD["invalid JSON"].row(tmp_path)
    path = write_manifest(tmp_path, [text_row(), empty_clip, broken_json])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: audio file ")):  # the first in row order
        encode(path, tokenizer, spec)
    path = write_manifest(tmp_path, [text_row(), BAD["zero-length audio"].row(tmp_path), text_row()])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: audio file ")):
        encode(path, tokenizer, spec, on_bad_sample="error")


def test_media_the_model_has_no_tower_for_is_a_bad_row(tmp_path, tokenizer, tokenizer_dir):
    write_media(tmp_path)
    audio_only = MediaSpec.from_config(tiny_model_config(tokenizer_dir, vision=False), DataConfig())
    path = write_manifest(tmp_path, [chat([I(tmp_path / "red.png"), T("Which digit?")], "zero")])
    with pytest.raises(DataError) as info:
        encode(path, tokenizer, audio_only)
    assert str(info.value) == (f"{path}:1: the sample has an image but the model has no vision tower: "
                               "add model.vision")


# ----------------------------------------------------------------------------- over-length rows


def _two_turns(folder):
    """Audio + answer, then two images + answer: runs of 8 audio, then 16 + 16 image tokens."""
    return chat([A(folder / "short.wav"), T("Transcribe the audio.")], ANSWER,
                [I(folder / "red.png"), I(folder / "green.png"), T("What is in the image?")], "A red circle.")


@pytest.mark.parametrize("into", [0, 1, 7, 15])
def test_text_truncation_keeps_whole_placeholder_runs_and_cuts_the_media_to_match(tmp_path, tokenizer, spec, into):
    write_media(tmp_path)
    path = write_manifest(tmp_path, [_two_turns(tmp_path)])
    (full,) = encode(path, tokenizer, spec)
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    (first, n1), (second, n2) = runs(full.input_ids, image_id)
    assert n1 == n2 == IMAGE_TOKENS and len(full.images) == 2

    for start, images_kept in ((second, 1), (first, 0)):  # a cut `into` tokens inside each image run
        dataset = encode(path, tokenizer, spec, max_length=start + into, truncation="text")
        (cut,) = dataset
        assert len(cut) == start  # moved back to the start of the run: none of it kept
        assert cut.input_ids.tolist() == full.input_ids[:start].tolist()
        assert cut.labels.tolist() == full.labels[:start].tolist()
        assert len(cut.images) == images_kept and len(cut.audio) == 1
        assert int((cut.input_ids == image_id).sum()) == IMAGE_TOKENS * len(cut.images)
        assert all(torch.equal(a, b) for a, b in zip(cut.images, full.images))
        assert cut.labels[cut.labels != IGNORE_INDEX].tolist() == ids_of(tokenizer, ANSWER + "<|im_end|>")
        assert dataset.stats()["truncated"] == 1 and dataset.stats()["skipped"] == 0


def test_text_truncation_between_runs_keeps_the_runs_before(tmp_path, tokenizer, spec):
    write_media(tmp_path)
    path = write_manifest(tmp_path, [_two_turns(tmp_path)])
    (full,) = encode(path, tokenizer, spec)
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    (_, _), (second, n) = runs(full.input_ids, image_id)
    (cut,) = encode(path, tokenizer, spec, max_length=second + n + 1, truncation="text")
    assert len(cut) == second + n + 1 and len(cut.images) == 2


def test_over_length_rows_are_dropped_and_counted_with_skip(tmp_path, tokenizer, spec):
    write_media(tmp_path)
    rows = [text_row(), _two_turns(tmp_path), text_row(), _two_turns(tmp_path)]
    path = write_manifest(tmp_path, rows)
    dataset = encode(path, tokenizer, spec, max_length=60, on_bad_sample="skip")
    assert [e.source for e in dataset] == [f"{path}:1", f"{path}:3"]
    assert [e.source for e in dataset.skipped] == [f"{path}:2", f"{path}:4"]
    stats = dataset.stats()
    assert stats["skipped"] == 2 and stats["skipped_by_reason"] == {"over-length": 2} and stats["truncated"] == 0

    dataset = encode(path, tokenizer, spec, max_length=60, truncation="text", on_bad_sample="skip")
    assert len(dataset) == 4 and max(dataset.lengths) <= 60 and dataset.stats()["truncated"] == 2
