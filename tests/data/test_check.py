"""`mmtune data check MANIFEST [--config CFG]` through the CLI entry point, on manifests and media
written by the test: every bad row with its line and reason, the good count, the media ranges,
and with a config the token lengths training would see and the over-length rows."""

import re

import pytest
import yaml

from mmtune.cli import main
from mmtune.config import DataConfig
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import MediaSpec
from mmtune.data.loader import encode_all
from mmtune.model.tokenizer import load_tokenizer
from tests.data.test_dataset import BAD, A, I, T, chat, text_row, write_manifest, write_media, write_png
from tests.tiny import TINY_CLIP, TINY_LLMS, TINY_WHISPER, tiny_model_config

BAD_ROWS = {2: "missing audio file", 4: "invalid JSON", 6: "truncated image", 7: "wrong role order", 9: "NaN audio"}


def good_rows(folder):
    write_png(folder / "wide.png", size=(48, 24), seed=5)
    return {1: chat([A(folder / "short.wav"), T("Transcribe the audio.")], "three one four"),
            3: chat([I(folder / "red.png"), T("Which digit is written here?")], "zero"),
            5: chat([A(folder / "long.wav"), I(folder / "wide.png"), T("Is it even or odd?")], "even"),
            8: text_row()}


def manifest(folder, with_bad=True, name="manifest.jsonl"):
    rows = good_rows(write_media(folder))
    if with_bad:
        rows |= {n: BAD[kind].row(folder) for n, kind in BAD_ROWS.items()}
    return write_manifest(folder, [rows[n] for n in sorted(rows)], name)


def write_config(folder, tokenizer_dir, **data):
    tree = {"model": {"llm": {"config": dict(TINY_LLMS["llama"]), "tokenizer": tokenizer_dir, "train": "full"},
                      "audio": {"config": dict(TINY_WHISPER), "projector": {"type": "stack", "stack": 2}},
                      "vision": {"config": dict(TINY_CLIP), "projector": {"type": "mlp", "layers": 2}}},
            "data": data}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def check(capsys, *argv) -> tuple[int, list[str]]:
    status = main(["data", "check", *map(str, argv)])
    return status, capsys.readouterr().out.splitlines()


def lengths_training_sees(path, tokenizer_dir, **data) -> list[int]:
    """Token lengths of the good rows, through the dataset (the path training takes)."""
    cfg = DataConfig(on_bad_sample="skip", num_workers=0, **data)
    dataset = MultimodalDataset.load(str(path), load_tokenizer(tokenizer_dir),
                                     MediaSpec.from_config(tiny_model_config(tokenizer_dir), cfg), cfg, progress=False)
    examples, _ = encode_all(dataset)
    return [len(e) for e in examples]


def test_bad_rows_are_listed_with_their_line_and_reason_and_ranges_printed(tmp_path, capsys):
    path = manifest(tmp_path)
    status, out = check(capsys, path)
    assert status == 1
    assert out[:3] == [f"{path}: 9 rows, 4 good, 5 bad",
                       "  audio clips: 2 (duration 0.30 s .. 0.55 s, total 0.0 min)",
                       "  images: 2 (width 32 px .. 48 px, height 24 px .. 32 px)"]
    bad = out[3:]
    assert len(bad) == len(BAD_ROWS)  # no token line without --config
    for line, (n, kind) in zip(bad, sorted(BAD_ROWS.items())):  # in line order
        prefix = f"  BAD {path}:{n}: "
        assert line.startswith(prefix), line
        assert re.fullmatch(BAD[kind].reason(tmp_path), line[len(prefix):]), (kind, line)


def test_clean_manifest_exits_0(tmp_path, capsys):
    path = manifest(tmp_path, with_bad=False)
    status, out = check(capsys, path)
    assert status == 0
    assert out[0] == f"{path}: 4 rows, 4 good, 0 bad" and not any("BAD" in line for line in out)


def test_with_a_config_token_lengths_and_over_length_rows_are_reported(tmp_path, capsys, tokenizer_dir):
    path = manifest(tmp_path)
    lengths = lengths_training_sees(path, tokenizer_dir)  # rows 1, 3, 5, 8
    assert len(lengths) == 4 and max(lengths) == lengths[2]  # row 5 (a clip and an image) is the longest
    limit = lengths[2] - 1
    status, out = check(capsys, path, "--config", write_config(tmp_path, tokenizer_dir, max_length=limit))
    assert status == 1
    assert out[0] == f"{path}: 9 rows, 3 good, 6 bad"
    kept = sorted(lengths[:2] + lengths[3:])
    assert out[3] == f"  tokens per row (media included): min {kept[0]}, median {kept[1]}, max {kept[2]}, limit {limit}"
    assert out[4] == "  over-length rows: 1"
    assert f"  BAD {path}:5: over-length: {lengths[2]} tokens (media included) > data.max_length={limit}; " \
           "raise max_length or shorten the sample" in out
    assert [line.split(": ")[0] for line in out[5:]] == [f"  BAD {path}:{n}" for n in (2, 4, 5, 6, 7, 9)]


def test_token_lengths_are_the_ones_training_sees_with_a_system_prompt(tmp_path, capsys, tokenizer_dir):
    path = manifest(tmp_path, with_bad=False)
    system = "Answer with digits only, and be brief."
    lengths = sorted(lengths_training_sees(path, tokenizer_dir, system=system))
    assert lengths != sorted(lengths_training_sees(path, tokenizer_dir))
    status, out = check(capsys, path, "--config", write_config(tmp_path, tokenizer_dir, system=system))
    assert status == 0
    assert out[3] == (f"  tokens per row (media included): min {lengths[0]}, median {lengths[2]}, max {lengths[3]}, "
                      "limit 2048")


def test_rows_cut_in_text_are_reported_but_not_bad(tmp_path, capsys, tokenizer_dir):
    path = manifest(tmp_path, with_bad=False)  # the clip-and-image row is line 3 here
    lengths = lengths_training_sees(path, tokenizer_dir)
    limit = max(lengths) - 1
    config = write_config(tmp_path, tokenizer_dir, max_length=limit, truncation="text")
    status, out = check(capsys, path, "--config", config)
    assert status == 0
    assert out[0] == f"{path}: 4 rows, 4 good, 0 bad"
    assert out[3].endswith(f", max {limit}, limit {limit}")
    assert out[4:] == ["  over-length rows: 1 (1 cut to the limit in text)",
                       f"  TRUNCATED {path}:3: over the token limit; the text past it is cut (data.truncation: text)"]


def test_a_missing_manifest_is_an_error_not_a_crash(tmp_path, capsys):
    status = main(["data", "check", str(tmp_path / "nope.jsonl")])
    assert status == 1
    assert "manifest file not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["data", "check"], ["data", "check", "a.jsonl", "--bogus"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_clips_over_max_audio_seconds_are_bad_rows_also_without_a_model(tmp_path):
    from mmtune.data.check import check_data

    path = manifest(tmp_path, with_bad=False)  # clips of 0.30 s (row 1) and 0.55 s (row 3 of the file)
    report = check_data(str(path), data=DataConfig(max_audio_seconds=0.5, num_workers=0), progress=False)
    assert [(e.source, e.reason) for e in report.bad] == [
        (f"{path}:3", f"audio file {tmp_path / 'long.wav'} is 0.6 s long, over data.max_audio_seconds=0.5: "
                      "raise it (the clip is encoded in windows of model.audio.window_seconds) or split the file")]
