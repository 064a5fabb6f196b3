"""The `mmtune` command. Each subcommand parses its arguments and calls one library function.
Every subcommand's --help says what it is for, what each option means (with its default) and
gives an example; `tests/test_cli.py` holds them to that.
"""

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

from mmtune import __version__
from mmtune.config import NORMALIZERS
from mmtune.errors import MmtuneError

EPILOG = """examples:
  mmtune train examples/speech_digits/config.yaml                 train, evaluate, write a report
  mmtune train examples/speech_digits/config.yaml max_steps=50 output_dir=runs/try resume=auto
  mmtune data check examples/speech_digits/data/train.jsonl --config examples/speech_digits/config.yaml
  mmtune data convert --table cv-corpus/en/validated.tsv --out data/train.jsonl   Common Voice table -> manifest
  mmtune eval --checkpoint runs/speech_digits/final --data examples/speech_digits/data/eval.jsonl
  mmtune transcribe --checkpoint runs/speech_digits/final clip1.wav clip2.flac
  mmtune generate --checkpoint runs/vision_digits/stage2/final --image digit.png --prompt "Which digit is written here?"
  mmtune chat --checkpoint runs/omni_digits/final
  mmtune export --checkpoint runs/speech_digits/final --out exported/
  mmtune bench packing --json packing.json
  mmtune bench data --json data.json
  mmtune bench methods --json methods.json                         LoRA, DoRA, rsLoRA, LoRA+, QLoRA, full
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; each option's help ends with its default (when it has one)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "%(default)" not in text
                and action.default not in (None, False, argparse.SUPPRESS, [])):
            text += " (default: %(default)s)"
        return text


def _command(sub, name: str, purpose: str, description: str = "", examples: str = ""):
    """A subcommand with its one-line purpose, a longer description and an examples epilog."""
    return sub.add_parser(name, help=purpose, formatter_class=HelpFormatter,
                          description=purpose + ("\n\n" + description if description else ""),
                          epilog="examples:\n" + examples if examples else None)


def main(argv: list[str] | None = None) -> int:
    from mmtune.console import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(all_processes=getattr(args, "log_all_processes", False) or None)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except MmtuneError as e:  # bad config, data, media, checkpoint: the message says what to fix
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished checkpoints are kept (resume with resume=auto)", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmtune", formatter_class=HelpFormatter, epilog=EPILOG,
        description="Fine-tune speech and vision-language models: any Whisper / CLIP / SigLIP encoder bridged "
                    "into any Hugging Face causal LLM through projectors and LoRA.\n"
                    "`mmtune COMMAND --help` explains a command.")
    parser.add_argument("--version", action="version", version=f"mmtune {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_generate(sub)
    _add_transcribe(sub)
    _add_chat(sub)
    _add_data(sub)
    _add_export(sub)
    _add_bench(sub)
    return parser


def _add_train(sub) -> None:
    p = _command(
        sub, "train", "train from a YAML config, evaluate, and write a report",
        "Overrides are key.sub=value with YAML values; short forms: output_dir=DIR max_steps=N epochs=X seed=N\n"
        "resume=auto|PATH lr=X. A run is train.max_steps steps or train.epochs passes over the data.\n"
        "With train.best_metric (loss, wer, cer: lower is better; accuracy: higher) the best evaluated\n"
        "checkpoint is kept and final/ holds it; train.early_stopping_patience=N stops after N evaluations\n"
        "without improvement. Writes OUTPUT_DIR/{metrics.jsonl, checkpoint-N/, final/, eval.json, report.md,\n"
        "curves.png, predictions.jsonl}. Progress redraws on a terminal and is written as plain lines every\n"
        "30 s when output goes to a file.\n"
        "Several configs are stages of one job, run in order: each is a run of its own (its own output_dir)\n"
        "and each after the first starts from the previous stage's final/ (model.init_from). Overrides apply to\n"
        "every stage; N:key=value to stage N only. With resume=auto a finished stage before the last is not\n"
        "run again.",
        "  mmtune train examples/speech_digits/config.yaml examples/speech_digits/voices.yaml   (the main job)\n"
        "  mmtune train examples/speech_digits/config.yaml\n"
        "  mmtune train examples/speech_digits/config.yaml train.lr=3e-4 data.batching=packed\n"
        "  mmtune train config.yaml max_steps=null epochs=3 train.best_metric=wer train.early_stopping_patience=2\n"
        "  mmtune train config.yaml resume=auto                 continue from the newest checkpoint-N\n"
        "  mmtune train stage1.yaml stage2.yaml 2:train.max_steps=500 seed=1\n"
        "  accelerate launch --num_processes 2 -m mmtune.cli train config.yaml")
    p.add_argument("config", help="YAML config file (see examples/*/config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="[config ...] overrides",
                   help="more YAML configs (later stages), then key.sub=value overrides, e.g. train.lr=3e-4 "
                        "data.batch_size=8 (N:key=value: stage N only)")
    p.add_argument("--log-all-processes", action="store_true",
                   help="under several processes, print every process's INFO lines (default: process 0's only)")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from mmtune.train.stages import train_stages

    configs = [args.config] + [item for item in args.overrides if "=" not in item]
    metrics = train_stages(configs, [item for item in args.overrides if "=" in item])
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


def _add_eval(sub) -> None:
    p = _command(
        sub, "eval", "evaluate a checkpoint on a manifest (loss, WER, CER, accuracy)",
        "WER/CER compare text after a normalizer (--normalizer): mmtune's own (lowercase, NFKC, punctuation\n"
        "removed, whitespace collapsed; words kept as written), Whisper's English one (numbers as digits,\n"
        "American spelling: the one published English Whisper WERs use) or Whisper's basic multilingual\n"
        "one; accuracy is exact match after the same normalization. Answers are greedy (--num-beams for\n"
        "beam search). When the rows have a voice, speaker, task or language column, the metrics are also\n"
        "given per value of it (--group-by picks the columns). Bad rows are skipped and counted.",
        "  mmtune eval --checkpoint runs/speech_digits/final --data examples/speech_digits/data/eval.jsonl\n"
        "  mmtune eval --checkpoint runs/vision_digits/stage2/final --data eval.jsonl --metrics accuracy \\\n"
        "      --json eval.json --predictions predictions.jsonl")
    p.add_argument("--checkpoint", required=True, help="a folder written by mmtune train (OUTPUT_DIR/final or "
                                                       "checkpoint-N)")
    p.add_argument("--data", required=True, help="manifest (JSONL or LLaVA JSON), Parquet/Arrow or a datasets folder")
    p.add_argument("--json", help="also write the metrics to this file (its folders are created)")
    p.add_argument("--predictions", help="write per-sample predictions here, as JSON lines (its folders are created)")
    p.add_argument("--instruction", default=None, help="prompt for ASR shorthand rows (default: the training one)")
    p.add_argument("--metrics", type=_metric_list, default="loss,wer,cer,accuracy",
                   help="comma-separated, from loss, wer, cer, accuracy")
    p.add_argument("--group-by", default=None,
                   help="comma-separated row columns to score by (default: voice, speaker, task, language where "
                        "present; '' for none)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=32,
                   help="longest answer generated, in tokens (>= 1)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="samples per generation and loss batch (>= 1)")
    p.add_argument("--max-samples", type=_positive_int, help="evaluate the first N rows only, N >= 1 (default: all)")
    p.add_argument("--normalizer", choices=NORMALIZERS, default="mmtune",
                   help="text normalization before WER/CER/accuracy: mmtune, whisper_english (comparable to "
                        "published English Whisper WERs), whisper_basic (published non-English ones)")
    p.add_argument("--num-beams", type=_positive_int, default=1, help="1: greedy answers; more: beam search")
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    from mmtune.data.dataset import MultimodalDataset
    from mmtune.data.encode import MediaSpec
    from mmtune.eval.run import evaluate, write_predictions
    from mmtune.model.checkpoint import load_checkpoint

    for flag, path in (("--json", args.json), ("--predictions", args.predictions)):
        _check_writable(flag, path)  # before the run, not after it
    model, tokenizer, model_cfg = load_checkpoint(args.checkpoint)
    data_cfg = _data_config(args.checkpoint, args.instruction)
    dataset = MultimodalDataset.load(args.data, tokenizer, MediaSpec.from_config(model_cfg, data_cfg), data_cfg)
    group_by = None if args.group_by is None else [c for c in args.group_by.split(",") if c]
    metrics, records = evaluate(model, tokenizer, dataset, args.metrics, args.max_new_tokens,
                                args.batch_size, args.max_samples, group_by=group_by,
                                normalizer_name=args.normalizer, num_beams=args.num_beams)
    metrics["skipped"] = len(dataset.skipped)
    metrics["normalizer"] = args.normalizer
    print(json.dumps(metrics, indent=2))  # printed first: a failed write below loses no result
    if args.json:
        with _writing("--json", args.json):
            _make_parents(args.json).write_text(json.dumps(metrics, indent=2))
    if args.predictions:
        with _writing("--predictions", args.predictions):
            write_predictions(records, args.predictions)
    return 0


def _metric_list(text: str) -> tuple[str, ...]:
    """--metrics "loss,wer" -> ("loss", "wer"); an unknown or missing name is an argparse error."""
    from mmtune.config import EVAL_METRICS

    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in EVAL_METRICS]
    if unknown or not names:
        what = f"unknown metric {', '.join(unknown)}" if unknown else "no metric named"
        raise argparse.ArgumentTypeError(f"{text!r}: {what}; choose from {', '.join(EVAL_METRICS)}")
    return names


def _check_writable(flag: str, path: str | None) -> None:
    """Raise MmtuneError now when `path` (an output file; its missing folders will be created) cannot be
    written: it is a folder, a file stands where a folder must go, or the first existing folder is read-only."""
    if path is None:
        return
    target = Path(path).absolute()
    if target.is_dir():
        raise MmtuneError(f"{flag} {path} is a folder: give the path of a file (in it or elsewhere)")
    if target.exists() and not os.access(target, os.W_OK):
        raise MmtuneError(f"{flag} {path}: no permission to write this file; give another path")
    folder = next(p for p in target.parents if p.exists())
    if not folder.is_dir():
        raise MmtuneError(f"{flag} {path}: {folder} is a file, so no folder can be made there; give another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MmtuneError(f"{flag} {path}: no permission to write in {folder}; give another path")


def _make_parents(path: str) -> Path:
    """`path` as a Path, its missing parent folders created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)


@contextlib.contextmanager
def _writing(flag: str, path: str):
    """Turn an OSError while writing `path` (disk full, permissions, a folder in the way) into one error line."""
    try:
        yield
    except OSError as e:
        raise MmtuneError(f"{flag} {path}: cannot write it ({e.strerror or e}); the results were printed "
                          f"above: give another path to keep them in a file") from None


def _data_config(checkpoint: str, instruction: str | None):
    """The data settings the checkpoint was trained with (its run's config), for prompts and limits."""
    from mmtune.config import DataConfig
    from mmtune.model.checkpoint import read_data_config

    data = read_data_config(checkpoint) or DataConfig()
    data.on_bad_sample = "skip"
    if instruction is not None:
        data.instruction = instruction
    return data


def _add_generate(sub) -> None:
    p = _command(
        sub, "generate", "answer one prompt, with optional audio and image inputs",
        "The prompt is one user turn; the files given are placed before its text, in the order given,\n"
        "as the chat template of the checkpoint lays them out.",
        '  mmtune generate --checkpoint runs/vision_digits/stage2/final --image digit.png \\\n'
        '      --prompt "Which digit is written here?"\n'
        '  mmtune generate --checkpoint runs/omni_digits/final --image q.png --audio q.wav --prompt "Answer." '
        '--sample --temperature 0.7')
    p.add_argument("--checkpoint", required=True, help="a folder written by mmtune train (OUTPUT_DIR/final)")
    p.add_argument("--prompt", required=True, help="the user's message text")
    # one list for both, in command-line order: the model sees the files in the order given
    p.add_argument("--image", dest="media", action="append", default=[], type=lambda path: ("image", path),
                   metavar="PATH", help="image file (repeatable; files go in in the order given)")
    p.add_argument("--audio", dest="media", action="append", default=[], type=lambda path: ("audio", path),
                   metavar="PATH", help="audio file (repeatable; give them in the order the model was trained "
                                        "with, e.g. --image q.png --audio q.wav for image-first rows)")
    _add_sampling(p)
    p.set_defaults(run=_run_generate)


def _add_sampling(p) -> None:
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, help="longest answer generated, in tokens (>= 1)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="with --sample: < 1 sharper, > 1 more varied (> 0; for greedy answers leave out --sample)")
    p.add_argument("--top-p", type=_probability, default=1.0,
                   help="with --sample: nucleus sampling's probability mass, more than 0 and at most 1")
    p.add_argument("--seed", type=_seed, default=0,
                   help="with --sample: the random seed, for repeatable answers (0 to 2**64 - 1)")


def _gen_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                top_p=args.top_p, seed=args.seed)


def _predictor(checkpoint: str, instruction: str | None = None):
    from mmtune.infer.generate import Predictor

    return Predictor.from_checkpoint(checkpoint, data=_data_config(checkpoint, instruction))


def _run_generate(args) -> int:
    for kind, path in args.media:  # before the model loads, which may take minutes
        if not Path(path).is_file():
            raise MmtuneError(f"--{kind} {path}: " + ("is a folder, not a file" if Path(path).is_dir() else
                                                      "no such file") + "; check the path")
    predictor = _predictor(args.checkpoint)
    print(predictor.answer(args.prompt, media=args.media, **_gen_kwargs(args)))
    return 0


def _add_transcribe(sub) -> None:
    p = _command(
        sub, "transcribe", "transcribe audio files with a speech checkpoint (batched, greedy or beam search)",
        "Prints one line per file: PATH<TAB>TEXT, in the order given; a file that cannot be read gets an\n"
        "`error: PATH: ...` line on stderr instead (the others are still transcribed) and the exit status is 1.\n"
        "Files are read with soundfile (WAV, FLAC, OGG/Opus, MP3) and resampled to 16 kHz. A recording may be\n"
        "as long as the run's data.max_audio_seconds (600 s by default); past 30 s it is encoded in 30 s\n"
        "windows, and the transcript may take 4 tokens a second (see --max-new-tokens). The model hears what\n"
        "it was trained on: the offline speech example's checkpoints know the ten digit words only: its stage 1\n"
        "(runs/speech_digits/final) synthetic voices only, the main job's final model\n"
        "(runs/speech_digits_voices/final) real people too, about 6 words in 10 of a voice it never heard.\n"
        "A Whisper checkpoint (model.whisper) hears at most its encoder's window (30 s) per file and is\n"
        "prompted with its language and task tokens; --num-beams 5 decodes as transformers' pipeline does.",
        "  mmtune transcribe --checkpoint runs/speech_digits/final clip1.wav clip2.flac\n"
        "  mmtune transcribe --checkpoint runs/speech_digits_voices/final my_voice.wav\n"
        "  mmtune transcribe --checkpoint runs/speech_digits/final recordings/*.ogg --batch-size 32 > out.tsv")
    p.add_argument("--checkpoint", required=True, help="a folder written by mmtune train (OUTPUT_DIR/final)")
    p.add_argument("files", nargs="+", help="audio files")
    p.add_argument("--instruction", default=None, help="the prompt (default: the instruction the checkpoint was "
                                                       "trained with)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="clips transcribed together (>= 1)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help="longest transcript, in tokens (default: 32, or 4 a second of the longest clip)")
    p.add_argument("--num-beams", type=_positive_int, default=1, help="1: greedy; more: beam search of that width")
    p.set_defaults(run=_run_transcribe)


def _run_transcribe(args) -> int:
    predictor = _predictor(args.checkpoint, args.instruction)
    texts = predictor.transcribe(args.files, batch_size=args.batch_size, progress=len(args.files) > 16,
                                 max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                                 return_errors=True)
    for path, text in zip(args.files, texts):
        if isinstance(text, MmtuneError):  # a DataError naming the file: "PATH: what is wrong"
            print(f"error: {text}", file=sys.stderr)
        else:
            print(f"{path}\t{text}")
    return 1 if any(isinstance(text, MmtuneError) for text in texts) else 0


def _add_chat(sub) -> None:
    p = _command(
        sub, "chat", "multi-turn chat in the terminal; /image PATH and /audio PATH attach files",
        "Type a message and press enter. /image PATH or /audio PATH attaches a file to your next message;\n"
        "/reset clears the conversation; /quit (or Ctrl-D) ends.",
        "  mmtune chat --checkpoint runs/omni_digits/final\n"
        "  mmtune chat --checkpoint runs/omni_digits/final --sample --temperature 0.8 --max-new-tokens 128")
    p.add_argument("--checkpoint", required=True, help="a folder written by mmtune train (OUTPUT_DIR/final)")
    _add_sampling(p)
    p.set_defaults(run=_run_chat)


def _run_chat(args) -> int:
    from mmtune.infer.chat import run_chat

    run_chat(_predictor(args.checkpoint), **_gen_kwargs(args))
    return 0


def _add_data(sub) -> None:
    p = _command(sub, "data", "check and convert training data",
                 "`mmtune data check` reads every row and its media; `mmtune data convert` writes a manifest from\n"
                 "a transcript table, a LibriSpeech folder or a Hugging Face dataset.",
                 "  mmtune data check data/train.jsonl --config config.yaml\n"
                 "  mmtune data convert --table cv-corpus/en/validated.tsv --out data/train.jsonl")
    dsub = p.add_subparsers(title="data commands", metavar="COMMAND")
    c = dsub.add_parser("check", help="read every row and its media; report ranges and every bad row",
                        formatter_class=HelpFormatter,
                        description="Read every row and its media; report ranges and every bad row.\n\n"
                                    "Exit status 1 when any row is bad or there is no row. With --config, the length "
                                    "index training uses\nis built (or read back from .mmtune_index/ beside the data) "
                                    "and token lengths (placeholders expanded for the\nconfigured encoders) and "
                                    "over-length rows are reported too; a later `mmtune train` with the same\n"
                                    "settings then starts at once.",
                        epilog="""examples:
  mmtune data check data/train.jsonl                                  rows and media, no tokenizer needed
  mmtune data check data/train.jsonl --config config.yaml             + token lengths, over-length rows, the index
  mmtune data check cv_parquet/ --config config.yaml data.columns.text=sentence    a datasets folder / Parquet
  mmtune data check 'shards/train-*.tar' --config config.yaml --headers-only       tar shards, index only""")
    c.add_argument("manifest", help="a .jsonl/.json manifest, .parquet/.arrow files, a datasets.save_to_disk folder, "
                                    "or .tar shards (a file, a quoted glob or a folder)")
    c.add_argument("--config", nargs="+", metavar=("CONFIG", "KEY=VALUE"),
                   help="training config (tokenizer, encoders, data.max_length, data.columns), then optional "
                        "key.sub=value overrides as for train")
    c.add_argument("--headers-only", action="store_true",
                   help="with --config: build or read the index (file headers) but decode no media")
    c.set_defaults(run=_run_data_check)
    v = dsub.add_parser(
        "convert", help="write an ASR manifest from a transcript table (TSV/CSV) or a LibriSpeech folder",
        formatter_class=HelpFormatter,
        description='Write an ASR manifest from a transcript table, a LibriSpeech folder or a Hugging Face dataset.'
                    '\n\nWrite {"audio": PATH, "text": TRANSCRIPT} JSON lines, audio paths relative to the manifest\'s\n'
                    "folder. Rows whose audio file is missing, whose transcript is empty or whose field count\n"
                    "differs from the header are skipped and listed; audio is only checked to exist, not decoded\n"
                    "(run `mmtune data check` on the result for that). The manifest appears under --out only when\n"
                    "the run ends with rows written; exit status 1 when no row was written.",
        epilog="""examples:
  Common Voice (columns path and sentence; the clips/ folder beside the table is used by itself):
    mmtune data convert --table cv-corpus/en/validated.tsv --out data/cv_train.jsonl
  LibriSpeech (every SPEAKER/CHAPTER/*.trans.txt under the folder, each ID.flac beside its .trans.txt):
    mmtune data convert --librispeech LibriSpeech/train-clean-100 --out data/ls_train.jsonl
  a CSV with its own column names, clips in another folder (paths in the table are relative to it):
    mmtune data convert --table labels.csv --audio-column wav_file --text-column label \\
        --audio-dir recordings/ --out data/train.jsonl
  a Hugging Face dataset (Common Voice-style columns), its embedded clips written to files:
    mmtune data convert --dataset cv_saved/ --column text=sentence --out data/train.jsonl
    (or train on it directly: data.train: cv_saved/ with data.columns: {text: sentence})
  then decode every clip once before training:
    mmtune data check data/train.jsonl""")
    source = v.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", help="TSV or CSV with a header row (delimiter from the extension)")
    source.add_argument("--librispeech", metavar="DIR", help="a LibriSpeech split folder, e.g. LibriSpeech/dev-clean")
    source.add_argument("--dataset", metavar="PATH", help="a Hugging Face dataset: save_to_disk folder, .parquet or "
                                                          ".arrow files; embedded clips/images are written to "
                                                          "--media-dir")
    v.add_argument("--media-dir", help="with --dataset: where embedded media files go (default: media/ beside --out)")
    v.add_argument("--column", action="append", default=[], metavar="KEY=COLUMN",
                   help="with --dataset: a manifest key from a dataset column, e.g. --column text=sentence")
    v.add_argument("--out", required=True, help="the manifest to write (.jsonl)")
    v.add_argument("--audio-dir", help="folder the table's audio paths are relative to (default: clips/ beside the "
                                       "table when it exists, else the table's folder)")
    v.add_argument("--audio-column", help="default: the first of audio, path, file, filename")
    v.add_argument("--text-column", help="default: the first of text, sentence, transcript, transcription")
    v.add_argument("--delimiter", type=lambda text: "\t" if text in ("\\t", "tab") else text,
                   help="field separator when the extension is neither .tsv nor .csv ('tab' or '\\t' for a tab)")
    v.set_defaults(run=_run_data_convert)


def _run_data_check(args) -> int:
    from mmtune.data.check import check_data, format_report

    encoder, max_length = None, None
    if args.config:
        from mmtune.config import load_config
        from mmtune.data.encode import MediaSpec, SampleEncoder
        from mmtune.model.build import load_model_tokenizer
        from mmtune.model.hub import check_sources

        cfg = load_config(args.config[0], args.config[1:])
        check_sources(cfg.model)
        tokenizer = load_model_tokenizer(cfg.model)
        encoder = SampleEncoder(tokenizer, MediaSpec.from_config(cfg.model, cfg.data), cfg.data, train=True)
        max_length = cfg.data.max_length
    report = check_data(args.manifest, encoder, decode=not args.headers_only)
    if report.rows == 0:
        raise MmtuneError(f"no rows: {args.manifest} is empty (blank lines are not rows); write one JSON row a "
                          f"line, or check the path")
    print(format_report(report, max_length))
    return 1 if report.bad else 0


def _run_data_convert(args) -> int:
    from mmtune.data.convert import librispeech_to_manifest, table_to_manifest

    if args.dataset:
        from mmtune.data.convert import dataset_to_manifest

        bad = [c for c in args.column if "=" not in c]
        if bad:
            raise MmtuneError(f"--column {bad[0]}: write it as KEY=COLUMN, e.g. --column text=sentence")
        report = dataset_to_manifest(args.dataset, args.out, args.media_dir, dict(c.split("=", 1) for c in args.column))
    elif args.table:
        report = table_to_manifest(args.table, args.out, args.audio_dir, args.audio_column, args.text_column,
                                   args.delimiter)
    else:
        table_only = [flag for flag, value in (("--audio-dir", args.audio_dir), ("--audio-column", args.audio_column),
                                               ("--text-column", args.text_column), ("--delimiter", args.delimiter))
                      if value is not None]
        if table_only:
            raise MmtuneError(f"{', '.join(table_only)} apply to --table only; a LibriSpeech folder keeps each "
                              "ID.flac beside its .trans.txt")
        report = librispeech_to_manifest(args.librispeech, args.out)
    print(report.format())
    return 0 if report.rows_written else 1


def _add_export(sub) -> None:
    p = _command(
        sub, "export", "merge LoRA and write a plain transformers model (LLaVA, Voxtral, Whisper or the LLM alone)",
        "What the checkpoint becomes (--format auto picks native where it can, and logs which):\n"
        "  vision bridge (CLIP/SigLIP tower, mlp projector)  LlavaForConditionalGeneration + LlavaProcessor\n"
        "  speech bridge (Whisper encoder, stack_mlp)        VoxtralForConditionalGeneration + tokenizer +\n"
        "                                                    WhisperFeatureExtractor\n"
        "  Whisper encoder-decoder                           WhisperForConditionalGeneration (pipeline-ready)\n"
        "  anything else, or --format llm                    the LLM (AutoModelForCausalLM), towers and\n"
        "                                                    projectors beside it in mmtune_towers.safetensors\n"
        "All load without mmtune; a LLaVA or Voxtral export is also a model.init_from for a new run. Prints the\n"
        "output folder. --out must not be, hold or lie inside the checkpoint folder; an existing --out is\n"
        "replaced only when it is empty or a previous export (it has mmtune_export.json), and a failed export\n"
        "leaves it as it was.",
        "  mmtune export --checkpoint runs/vision_digits/stage2/final --out exported/vision_llava\n"
        "  mmtune export --checkpoint runs/speech_digits/final --out exported/speech_llm --format llm")
    p.add_argument("--checkpoint", required=True, help="a folder written by mmtune train (OUTPUT_DIR/final or "
                                                       "checkpoint-N)")
    p.add_argument("--out", required=True, help="the folder to write (created with its parents; a previous export "
                                                "there is replaced)")
    p.add_argument("--format", choices=("auto", "native", "llm"), default="auto",
                   help="native: LLaVA / Voxtral (an error says why a model cannot be); llm: the LLM alone with the "
                        "towers beside it; auto: native where possible, else llm (default: auto)")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from mmtune.model.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out, args.format))
    return 0


def _add_bench(sub) -> None:
    p = _command(sub, "bench", "measure this machine: packing, long rows, fine-tuning methods, audio encoder, "
                               "features, data pipeline",
                 "Each benchmark runs its variants side by side in one process and prints (or --json writes) the\n"
                 "figures; BENCHMARKS.md holds the recorded ones.",
                 "  mmtune bench packing --json packing.json\n  mmtune bench data --sizes 2000 20000")
    bsub = p.add_subparsers(title="benchmarks", metavar="BENCH")
    d = bsub.add_parser("data", help="per-draw data workers vs the eager pipeline at 2k, 20k, 200k rows",
                        formatter_class=HelpFormatter,
                        description="Per-draw data workers vs the eager pipeline at 2k, 20k, 200k rows.\n\n"
                                    "Time to the first step, peak RSS of the main process and of the workers, and "
                                    "the share of step time spent\nwaiting for data, for manifests of each size made "
                                    "from the speech example's 2,000 clips (reused row after\nrow), each run in a "
                                    "fresh process: cold (index built), warm (index read back), eager (every row\n"
                                    "decoded before step one; only up to --eager-max rows). The 200k cold run builds "
                                    "an index of 200k rows\n(minutes on 2 cores).",
                        epilog="examples:\n  mmtune bench data --json data.json\n"
                               "  mmtune bench data --sizes 2000 20000 --steps 20        a quicker look")
    d.add_argument("--sizes", type=_positive_int, nargs="+", default=[2000, 20000, 200000], help="manifest rows")
    d.add_argument("--steps", type=_positive_int, default=40, help="optimizer steps timed per run (after the first)")
    d.add_argument("--workers", type=_whole_number, default=2,
                   help="data.num_workers of the per-draw runs (0: the main process)")
    d.add_argument("--eager-max", type=_whole_number, default=20000,
                   help="largest size the eager pipeline is run at (0: never)")
    d.add_argument("--json", help=JSON_HELP)
    d.set_defaults(run=_run_bench, bench="data")
    g = _command(bsub, "long", "memory and speed of one long packed row, 1k -> 32k tokens, plain vs chunked loss",
                 "An LLM with Qwen2.5's 151,936-token vocabulary and a small hidden size trains one packed row of\n"
                 "each length (1,024-token samples, every position supervised), each run in a fresh process: peak\n"
                 "memory of the step (VmHWM above the resident size before it; on CUDA max_memory_allocated), the\n"
                 "loss's share (step minus the same step without the output head) and tokens/s. The plain loss is\n"
                 "skipped, and extrapolated, where its logits would not fit in the memory available.",
                 "  mmtune bench long --json long.json\n"
                 "  mmtune bench long --lengths 1024 4096          a quicker look")
    g.add_argument("--lengths", type=_positive_int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768],
                   help="tokens of the packed row")
    g.add_argument("--hidden", type=_hidden_size, default=64,
                   help="the LLM's hidden size, a multiple of 8 (its vocabulary stays 151,936)")
    _add_run_options(g, "long")
    f = _command(bsub, "methods", "one LLM fine-tuned each way: trainable parameters, memory, s/step",
                 "Each method (lora, dora, rslora, loraplus, qlora, full) runs in a fresh process: the preset's LLM\n"
                 "(random weights; 0.5b has Qwen2.5-0.5B's sizes) built through mmtune's plans, AdamW as training\n"
                 "builds it, one warm-up step, then --steps steps on random sequences. Prints trainable parameters,\n"
                 "the LLM's weight memory as held (4-bit for qlora), the steps' peak memory (VmHWM; on CUDA\n"
                 "max_memory_allocated) and seconds per step.",
                 "  mmtune bench methods --json methods.json\n"
                 "  mmtune bench methods --preset tiny --methods lora qlora        a quick look")
    f.add_argument("--preset", default="0.5b", choices=BENCH_METHOD_PRESETS, help="the LLM's sizes")
    f.add_argument("--methods", nargs="+", default=list(BENCH_METHODS), choices=BENCH_METHODS, help="what to run")
    f.add_argument("--tokens", type=_positive_int, default=128, help="tokens per sequence")
    f.add_argument("--batch", type=_positive_int, default=2, help="sequences per step")
    f.add_argument("--steps", type=_positive_int, default=2, help="optimizer steps measured (after one warm-up)")
    _add_run_options(f, "methods")
    w = _command(bsub, "whisper", "a real-size Whisper (random weights) trained, saved, reloaded and run",
                 "The preset's WhisperForConditionalGeneration (small: whisper-small's config values, 241.7 M\n"
                 "parameters, Whisper's 51,865-token vocabulary; random weights, nothing downloaded) runs through\n"
                 "mmtune's code path in a fresh process: clips encoded and padded to 30 s, --steps AdamW steps with\n"
                 "the encoder and decoder planned as given, a checkpoint saved and loaded back (the loss must not\n"
                 "change), then greedy transcription. Prints parameters, s/step, peak memory, save/load/generate s.",
                 "  mmtune bench whisper --json whisper_small.json\n"
                 "  mmtune bench whisper --preset tiny --encoder full --decoder full     a quick look")
    w.add_argument("--preset", default="small", choices=BENCH_WHISPER_PRESETS, help="the model's sizes")
    w.add_argument("--encoder", default="lora", choices=("frozen", "lora", "full"), help="the encoder's plan")
    w.add_argument("--decoder", default="lora", choices=("frozen", "lora", "full"), help="the decoder's plan")
    w.add_argument("--batch", type=_positive_int, default=2, help="clips per step (2 to 5 s each)")
    w.add_argument("--steps", type=_positive_int, default=1, help="optimizer steps measured (after one warm-up)")
    w.add_argument("--max-new-tokens", type=_positive_int, default=8, help="tokens generated per clip")
    w.add_argument("--tokenizer", help="a Whisper tokenizer folder (default: examples/whisper_digits/tokenizer)")
    _add_run_options(w, "whisper")
    for name, help_text in (("packing", "padded vs packed training throughput on a realistic mix"),
                            ("audio-encoder", "variable-length vs 30 s-padded Whisper encoding of 5 s clips"),
                            ("features", "mmtune log-mel vs transformers' WhisperFeatureExtractor")):
        b = _command(bsub, name, help_text, "Prints the figures as JSON; ratios are of the two sides in this run.",
                     f"  mmtune bench {name} --json {name}.json\n  mmtune bench {name} --device cuda"
                     + (" --preset 0.5b" if name == "packing" else " --preset small" if name == "audio-encoder"
                        else ""))
        b.add_argument("--json", help=JSON_HELP)
        b.add_argument("--device", default="cpu", help="cpu, or cuda (a GPU)")
        b.add_argument("--threads", type=_positive_int, default=None if name != "features" else 1,
                       help="torch CPU threads during the run (1 gives steady figures on a shared machine)")
        if name != "features":
            real = "0.5b" if name == "packing" else "small"
            b.add_argument("--preset", default="tiny", choices=("tiny", real),
                           help=f"tiny (CPU); {real}: real sizes, bf16, for --device cuda")
        if name == "packing":
            b.add_argument("--peak-tflops", type=_positive_float,
                           help="the card's dense bf16 peak, for MFU, if not known")
            b.add_argument("--num-samples", type=_positive_int,
                           help="samples of the mix (default: the preset's, 256 / 1024)")
            b.add_argument("--steps", type=_positive_int, help="optimizer steps per mode (default: one epoch each)")
            b.add_argument("--batch-size", type=_positive_int,
                           help="samples per padded batch (default: the preset's, 8 / 16)")
            b.add_argument("--max-tokens", type=_positive_int,
                           help="tokens per packed row (default: the preset's, 2048 / 16384: about batch-size "
                                "x the mean sample length)")
        else:
            b.add_argument("--num-clips", type=_positive_int, default=16 if name == "audio-encoder" else 64,
                           help="clips encoded per side")
        if name == "audio-encoder":
            b.add_argument("--seconds", type=_clip_seconds, default=5.0,
                           help="clip length, at most 30 (the padded side pads every clip to 30 s)")
        if name == "features":
            b.add_argument("--mels", type=int, default=80, choices=(80, 128), help="80 (Whisper) or 128 (large-v3)")
        b.set_defaults(run=_run_bench, bench=name)


JSON_HELP = "also write the result to this file (its folders are created)"


def _add_run_options(p, bench: str) -> None:
    """--device, --threads and --json of a benchmark that runs in fresh processes."""
    p.add_argument("--device", default="cpu", help="cpu, or cuda (a GPU)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads in each run")
    p.add_argument("--json", help=JSON_HELP)
    p.set_defaults(run=_run_bench, bench=bench)
# mmtune.bench.methods' METHODS and PRESETS, named here so `mmtune --help` needs no torch (a test holds them equal)
BENCH_METHODS = ("lora", "dora", "rslora", "loraplus", "qlora", "full", "hft")
BENCH_METHOD_PRESETS = ("tiny", "0.5b")
BENCH_WHISPER_PRESETS = ("tiny", "small")  # mmtune.bench.whisper.PRESETS


def _whole_number(text: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text}: give at least {minimum}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, minimum=1)


def _seed(text: str) -> int:
    value = _whole_number(text)
    if value >= 2 ** 64:
        raise argparse.ArgumentTypeError(f"{text}: torch takes seeds below 2**64")
    return value


def _hidden_size(text: str) -> int:
    value = _positive_int(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{text}: give a multiple of 8 (4 attention heads of an even size)")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: give a number more than 0")
    return value


def _probability(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"{text}: give a probability more than 0 and at most 1")
    return value


def _clip_seconds(text: str) -> float:
    seconds = float(text)
    if not 0 < seconds <= 30:  # NaN too
        raise argparse.ArgumentTypeError(f"{text}: a Whisper encoder takes clips of more than 0 and at most 30 s")
    return seconds


def _run_bench(args) -> int:
    from mmtune.bench.report import write_json

    _check_writable("--json", args.json)  # before a run of minutes, not after it
    if args.bench == "data":
        from mmtune.bench.data import run

        result = run(sizes=args.sizes, steps=args.steps, workers=args.workers, eager_max=args.eager_max)
    elif args.bench == "methods":
        from mmtune.bench.methods import run

        result = run(preset=args.preset, methods=args.methods, tokens=args.tokens, batch=args.batch,
                     steps=args.steps, device=args.device, threads=args.threads)
    elif args.bench == "whisper":
        from mmtune.bench.whisper import run

        result = run(preset=args.preset, encoder=args.encoder, decoder=args.decoder, batch=args.batch,
                     steps=args.steps, max_new_tokens=args.max_new_tokens, device=args.device, threads=args.threads,
                     tokenizer=args.tokenizer)
    elif args.bench == "long":
        from mmtune.bench.long import run

        result = run(lengths=args.lengths, device=args.device, threads=args.threads, hidden=args.hidden)
    elif args.bench == "packing":
        from mmtune.bench.packing import run

        result = run(steps=args.steps, num_samples=args.num_samples, device=args.device, preset=args.preset,
                     batch_size=args.batch_size, max_tokens=args.max_tokens, peak_tflops=args.peak_tflops,
                     threads=args.threads)
    elif args.bench == "audio-encoder":
        from mmtune.bench.audio_encoder import run

        result = run(num_clips=args.num_clips, seconds=args.seconds, device=args.device, preset=args.preset,
                     threads=args.threads)
    else:
        from mmtune.bench.features import run

        result = run(num_clips=args.num_clips, device=args.device, n_mels=args.mels, threads=args.threads)
    print(write_json(result, None))  # printed first: a failed write below loses no result
    if args.json:
        with _writing("--json", args.json):
            write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
