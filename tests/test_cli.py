import argparse
import json

import pytest
import torch

from mmtune.cli import build_parser, main


def test_generate_keeps_the_command_line_order_of_media():
    parse = lambda *media: build_parser().parse_args(["generate", "--checkpoint", "c", "--prompt", "p", *media]).media
    assert parse("--image", "7.png", "--audio", "q.wav") == [("image", "7.png"), ("audio", "q.wav")]
    assert parse("--audio", "q.wav", "--image", "7.png", "--image", "8.png") == \
        [("audio", "q.wav"), ("image", "7.png"), ("image", "8.png")]
    assert parse() == []


def test_bench_packing_options_reach_the_run(tmp_path, capsys):
    out = tmp_path / "packing.json"
    code = main(["bench", "packing", "--num-samples", "12", "--steps", "1", "--batch-size", "4", "--max-tokens", "1024",
                 "--threads", "1", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert (result["num_samples"], result["batch_size"], result["max_tokens"]) == (12, 4, 1024)
    assert result["steps"] == {"padded": 1, "grouped": 1, "packed": 1}
    assert json.loads(capsys.readouterr().out) == result  # the same JSON on stdout


def test_bench_audio_encoder_rejects_clips_a_whisper_encoder_cannot_take(capsys):
    for bad in ("40", "0"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["bench", "audio-encoder", "--seconds", bad])
        assert "at most 30 s" in capsys.readouterr().err
    args = build_parser().parse_args(["bench", "audio-encoder", "--seconds", "2.5", "--num-clips", "3"])
    assert (args.seconds, args.num_clips) == (2.5, 3)


def test_bench_on_a_missing_gpu_says_so_before_building_anything(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "packing", "--device", "cuda", "--preset", "0.5b"]) == 1
    err = capsys.readouterr().err
    assert "error: --device cuda:" in err and "sees no CUDA device" in err and "Traceback" not in err
    assert main(["bench", "features", "--device", "tpu9"]) == 1
    assert "--device tpu9" in capsys.readouterr().err


def _commands(parser, prefix=()):
    """(command words, parser) of every subcommand, nested ones (data check, bench packing) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_command_help_teaches(capsys):
    """A purpose, every option's meaning (defaults shown) and an example, for every command."""
    commands = list(_commands(build_parser()))
    assert len(commands) >= 14
    for words, sub in commands:
        text = sub.format_help()
        assert sub.description and "example" in text, words
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, (words, action.dest)
    train_help = dict(commands)[("train",)].format_help()
    assert "train.best_metric" in train_help and "epochs" in train_help
    assert "(default: 16)" in dict(commands)[("transcribe",)].format_help()


def test_version(capsys):
    from mmtune import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"mmtune {__version__}"
