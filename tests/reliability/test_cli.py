"""Every bad command line ends in one `error:` line (exit 1) or a usage error (exit 2), never a traceback;
commands over many files finish the good ones.

Each test runs `mmtune` as a user would, through `main([...])`, on one tiny checkpoint built once.
"""

import json
import os
import shutil

import pytest
import torch

from mmtune.model.build import build_model
from mmtune.model.checkpoint import save_checkpoint
from tests.reliability.helpers import error_lines, run_cli
from tests.tiny import tiny_model_config, write_asr_run


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    """A tiny audio + vision model saved as a user's checkpoint (random weights: the answers are noise)."""
    cfg = tiny_model_config(tokenizer_dir)
    torch.manual_seed(0)
    model, tokenizer = build_model(cfg)
    return str(save_checkpoint(model, tokenizer, cfg, tmp_path_factory.mktemp("run") / "final"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory, tokenizer_dir):
    """A folder with audio/0.wav .. audio/7.wav, eval.jsonl (4 rows) and a bad.wav that is not audio."""
    folder = tmp_path_factory.mktemp("clips")
    write_asr_run(folder, tokenizer_dir, rows=8)
    (folder / "bad.wav").write_bytes(b"RIFF but not really a wav file")
    return folder


def _one_error(capsys, *argv) -> str:
    """The single `error:` line of a run that must fail with exit status 1."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 1, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    return lines[0]


def _usage_error(capsys, *argv) -> str:
    """The argparse message of a run that must stop with a usage error (exit status 2)."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    return err.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- numbers and names in flags


@pytest.mark.parametrize("metrics, named", [("bleu", "unknown metric bleu"), ("loss,bleu,wer", "unknown metric bleu"),
                                            (",", "no metric named")])
def test_an_unknown_eval_metric_is_a_usage_error_listing_the_known_ones(capsys, metrics, named):
    message = _usage_error(capsys, "eval", "--checkpoint", "c", "--data", "d.jsonl", "--metrics", metrics)
    assert "argument --metrics" in message and named in message
    assert "choose from loss, wer, cer, accuracy" in message


ZERO_OR_NEGATIVE = [
    (["eval", "--checkpoint", "c", "--data", "d"], "--max-new-tokens", "0"),
    (["eval", "--checkpoint", "c", "--data", "d"], "--batch-size", "0"),
    (["eval", "--checkpoint", "c", "--data", "d"], "--max-samples", "0"),
    (["transcribe", "--checkpoint", "c", "a.wav"], "--batch-size", "0"),
    (["transcribe", "--checkpoint", "c", "a.wav"], "--batch-size", "-4"),
    (["transcribe", "--checkpoint", "c", "a.wav"], "--max-new-tokens", "0"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--sample"], "--temperature", "0"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--sample"], "--temperature", "-0.5"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--sample"], "--temperature", "nan"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--sample"], "--top-p", "0"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--sample"], "--top-p", "1.5"),
    (["generate", "--checkpoint", "c", "--prompt", "p", "--sample"], "--seed", "-1"),
    (["chat", "--checkpoint", "c"], "--max-new-tokens", "-1"),
    (["chat", "--checkpoint", "c"], "--top-p", "-0.1"),
    (["bench", "data"], "--steps", "0"),
    (["bench", "data"], "--sizes", "0"),
    (["bench", "data"], "--workers", "-1"),
    (["bench", "data"], "--eager-max", "-1"),
    (["bench", "long"], "--lengths", "0"),
    (["bench", "long"], "--hidden", "12"),
    (["bench", "long"], "--threads", "0"),
    (["bench", "packing"], "--steps", "0"),
    (["bench", "packing"], "--num-samples", "0"),
    (["bench", "packing"], "--batch-size", "0"),
    (["bench", "packing"], "--max-tokens", "-8"),
    (["bench", "packing"], "--peak-tflops", "0"),
    (["bench", "audio-encoder"], "--num-clips", "0"),
    (["bench", "features"], "--num-clips", "0"),
    (["bench", "features"], "--threads", "0"),
]


@pytest.mark.parametrize("command, flag, value", ZERO_OR_NEGATIVE, ids=lambda v: v if isinstance(v, str) else v[0])
def test_a_count_of_zero_or_a_negative_number_is_a_usage_error_naming_the_flag(capsys, command, flag, value):
    message = _usage_error(capsys, *command, flag, value)
    assert f"argument {flag}: {value}: give" in message, message


def test_the_edges_of_each_range_are_accepted(capsys):
    from mmtune.cli import build_parser

    parse = build_parser().parse_args
    args = parse(["generate", "--checkpoint", "c", "--prompt", "p", "--sample", "--top-p", "1", "--temperature",
                  "0.01", "--seed", "0"])
    assert (args.top_p, args.temperature, args.seed) == (1.0, 0.01, 0)
    args = parse(["bench", "data", "--workers", "0", "--eager-max", "0", "--steps", "1"])
    assert (args.workers, args.eager_max, args.steps) == (0, 0, 1)
    assert parse(["eval", "--checkpoint", "c", "--data", "d", "--metrics", "wer, loss,wer"]).metrics == ("wer", "loss")


# ----------------------------------------------------------------------------- output files


def test_eval_creates_the_folders_of_its_output_files(capsys, checkpoint, clips, tmp_path):
    metrics, predictions = tmp_path / "new" / "deeper" / "eval.json", tmp_path / "other" / "predictions.jsonl"
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", checkpoint, "--data", clips / "eval.jsonl", "--metrics",
                        "loss,wer", "--max-new-tokens", "2", "--json", metrics, "--predictions", predictions)
    assert code == 0
    assert json.loads(metrics.read_text()) == json.loads(out)
    assert len(predictions.read_text().splitlines()) == 4


@pytest.mark.parametrize("flag", ["--json", "--predictions"])
def test_an_eval_output_path_that_cannot_be_a_file_is_refused_before_the_run(capsys, clips, tmp_path, flag):
    (tmp_path / "taken").write_text("a file where a folder must go")
    nowhere = tmp_path / "no-checkpoint"  # refused before the checkpoint is even read
    for path, says in ((tmp_path, "is a folder"), (tmp_path / "taken" / "eval.json", "is a file, so no folder")):
        error = _one_error(capsys, "eval", "--checkpoint", nowhere, "--data", clips / "eval.jsonl", flag, path)
        assert error.startswith(f"error: {flag} {path}") and says in error


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
def test_a_failed_write_of_the_metrics_is_one_error_line_after_they_are_printed(capsys, checkpoint, clips):
    code, out, err = run_cli(capsys, "eval", "--checkpoint", checkpoint, "--data", clips / "eval.jsonl",
                          "--metrics", "loss", "--json", "/dev/full")
    assert code == 1 and json.loads(out)["num_samples"] == 4  # the result is not lost
    assert error_lines(err) == [error_lines(err)[0]] and "error: --json /dev/full: cannot write it (No space left" in err


def test_bench_json_into_a_folder_is_refused_before_the_bench_runs(capsys, tmp_path):
    error = _one_error(capsys, "bench", "features", "--num-clips", "1", "--json", tmp_path)
    assert error.startswith(f"error: --json {tmp_path} is a folder")


# ----------------------------------------------------------------------------- export


def _files(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def own_checkpoint(checkpoint, tmp_path):
    """A copy of the checkpoint at tmp_path/runs/final, for the tests that aim an export at it."""
    return shutil.copytree(checkpoint, tmp_path / "runs" / "final")


@pytest.mark.parametrize("where, says", [("itself", "is the checkpoint folder"), ("inside", "lies inside the checkpoint"),
                                         ("parent", "holds the checkpoint folder")])
def test_export_never_writes_into_over_or_around_its_checkpoint(capsys, own_checkpoint, where, says):
    out = {"itself": own_checkpoint, "inside": own_checkpoint / "exported", "parent": own_checkpoint.parent}[where]
    before = _files(own_checkpoint.parent)
    error = _one_error(capsys, "export", "--checkpoint", own_checkpoint, "--out", out)
    assert error.startswith(f"error: --out {out} ") and says in error
    assert _files(own_checkpoint.parent) == before  # nothing written, nothing removed


def test_export_onto_a_file_or_a_folder_of_other_files_is_refused_and_leaves_them(capsys, checkpoint, tmp_path):
    (tmp_path / "model.bin").write_text("mine")
    error = _one_error(capsys, "export", "--checkpoint", checkpoint, "--out", tmp_path / "model.bin")
    assert error == f"error: --out {tmp_path / 'model.bin'} is a file: give a folder (it is created)"
    error = _one_error(capsys, "export", "--checkpoint", checkpoint, "--out", tmp_path)
    assert "holds other files (not a previous mmtune export)" in error
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"] and (tmp_path / "model.bin").read_text() == "mine"


def test_export_replaces_a_previous_export_and_fills_an_empty_folder(capsys, checkpoint, tmp_path):
    out = tmp_path / "exports" / "speech"  # parents created
    assert run_cli(capsys, "export", "--checkpoint", checkpoint, "--out", out)[0] == 0
    (out / "left-from-before.txt").write_text("stale")
    code, printed, _ = run_cli(capsys, "export", "--checkpoint", checkpoint, "--out", out)
    assert code == 0 and printed.strip() == str(out)
    assert (out / "config.json").is_file() and (out / "mmtune_towers.safetensors").is_file()
    assert not (out / "left-from-before.txt").exists()  # the folder is the new export, nothing mixed in
    assert sorted(p.name for p in out.parent.iterdir()) == ["speech"]  # no temporary folder left beside it
    (tmp_path / "empty").mkdir()
    assert run_cli(capsys, "export", "--checkpoint", checkpoint, "--out", tmp_path / "empty")[0] == 0


# ----------------------------------------------------------------------------- many files, some bad


def test_transcribe_prints_every_good_file_and_one_error_line_per_bad_one(capsys, checkpoint, clips):
    good = [clips / "audio" / f"{i}.wav" for i in range(3)]
    missing, bad = clips / "missing.wav", clips / "bad.wav"
    code, alone, _ = run_cli(capsys, "transcribe", "--checkpoint", checkpoint, *good, "--max-new-tokens", "3",
                          "--batch-size", "2")
    assert code == 0
    code, out, err = run_cli(capsys, "transcribe", "--checkpoint", checkpoint, good[0], missing, good[1], bad, good[2],
                          "--max-new-tokens", "3", "--batch-size", "2")
    assert code == 1
    assert out == alone  # the good files, in the order given, with the transcripts they get without the bad ones
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(p) for p in good]
    errors = error_lines(err)
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {missing}: ") and "not found" in errors[0]  # in the order given
    assert errors[1].startswith(f"error: {bad}: ")


def test_transcribe_with_only_bad_files_prints_no_transcript(capsys, checkpoint, clips):
    code, out, err = run_cli(capsys, "transcribe", "--checkpoint", checkpoint, clips / "bad.wav")
    assert (code, out) == (1, "") and error_lines(err)[0].startswith(f"error: {clips / 'bad.wav'}: ")


@pytest.mark.parametrize("flag", ["--image", "--audio"])
def test_generate_with_a_missing_media_file_is_one_error_line_before_the_model_loads(capsys, tmp_path, flag):
    missing = tmp_path / "missing.file"
    error = _one_error(capsys, "generate", "--checkpoint", tmp_path / "no-checkpoint", "--prompt", "Which digit?",
                       flag, missing)
    assert error == f"error: {flag} {missing}: no such file; check the path"


def test_generate_with_an_undecodable_image_is_one_error_line(capsys, checkpoint, clips):
    error = _one_error(capsys, "generate", "--checkpoint", checkpoint, "--prompt", "Which digit?",
                       "--image", clips / "bad.wav", "--max-new-tokens", "2")
    assert str(clips / "bad.wav") in error


# ----------------------------------------------------------------------------- empty data, wrong checkpoints


@pytest.mark.parametrize("text", ["", "\n\n   \n"])
def test_data_check_on_an_empty_manifest_fails(capsys, tmp_path, text):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(text)
    assert _one_error(capsys, "data", "check", manifest).startswith(f"error: no rows: {manifest} is empty")


@pytest.mark.parametrize("command", [["eval", "--data", "d.jsonl"], ["generate", "--prompt", "p"],
                                     ["transcribe", "a.wav"], ["export", "--out", "OUT"]], ids=lambda c: c[0])
def test_a_checkpoint_that_is_not_one_is_one_error_line(capsys, clips, tmp_path, command):
    command = [str(tmp_path / "out") if word == "OUT" else word for word in command]
    for path in (clips, clips / "eval.jsonl", tmp_path / "nowhere"):  # a folder of other files, a file, nothing
        error = _one_error(capsys, *command, "--checkpoint", path)
        assert error.startswith(f"error: checkpoint folder {path} ")
    assert not (tmp_path / "out").exists()
