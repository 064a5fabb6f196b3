"""`mmtune data convert`: a transcript table or a LibriSpeech tree -> an ASR manifest (JSON lines).

    report = table_to_manifest("cv/en/validated.tsv", "data/train.jsonl")
    print(report.format())  # data/train.jsonl: 2 rows written from cv/en/validated.tsv, 1 skipped ...
    # data/train.jsonl now holds {"audio": "../cv/en/clips/a.mp3", "text": "Hello there."} per line

Rows stream: each input row is read, checked and written before the next is read, so a corpus of
millions of rows needs no more memory than one. The manifest is written to a hidden temporary file
beside `out` and renamed to `out` only when the run ends with at least one row written; a killed or
failed run leaves whatever was under `out` before. Audio paths are written relative to the
manifest's folder. A bad row (audio file missing, empty transcript, wrong number of fields, a row
`read_manifest` would reject) is skipped and reported as a DataError whose source is "FILE:LINE"
(1-based); only the audio file's existence is checked, nothing is decoded (`mmtune data check` does).
"""

import csv
import itertools
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from mmtune.data.formats import parse_row
from mmtune.errors import DataError

AUDIO_COLUMNS = ("audio", "path", "file", "filename")  # first match wins, case-insensitive
TEXT_COLUMNS = ("text", "sentence", "transcript", "transcription")
DELIMITERS = {".tsv": "\t", ".csv": ","}
SHOWN_SKIPPED = 20  # rows listed by ConvertReport.format()
KEPT_SKIPPED = 1000  # errors kept in ConvertReport.skipped; all are counted in skipped_count
MISSING_AUDIO = "audio file not found: "


@dataclass
class ConvertReport:
    source: str  # the table or the LibriSpeech folder
    out: str  # the manifest
    audio_dir: str | None = None  # where table paths were resolved (None for LibriSpeech)
    rows_written: int = 0
    skipped: list[DataError] = field(default_factory=list)  # the first KEPT_SKIPPED skipped rows, in file order
    skipped_count: int = 0  # every skipped row

    def skip(self, source: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < KEPT_SKIPPED:
            self.skipped.append(DataError(source, reason))

    def format(self) -> str:
        """One summary line, then the first 20 skipped rows.

            ConvertReport("t.tsv", "m.jsonl", rows_written=2).format()
            # "m.jsonl: 2 rows written from t.tsv, 0 skipped"
        """
        if self.rows_written:
            head = f"{self.out}: {_rows(self.rows_written)} written from {self.source}, {self.skipped_count} skipped"
        else:
            head = f"{self.out}: not written, no usable row in {self.source} ({self.skipped_count} skipped)"
        lines = [head] + [f"  SKIPPED {e.source}: {e.reason}" for e in self.skipped[:SHOWN_SKIPPED]]
        if self.skipped_count > SHOWN_SKIPPED:
            lines.append(f"  ... and {self.skipped_count - SHOWN_SKIPPED} more")
        if not self.rows_written and self.audio_dir and any(e.reason.startswith(MISSING_AUDIO) for e in self.skipped):
            lines.append(f"  audio paths were resolved against {self.audio_dir}; if the clips are elsewhere, "
                         "pass --audio-dir with the folder the table's paths are relative to")
        return "\n".join(lines)


def table_to_manifest(table: str | os.PathLike, out: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
                      audio_column: str | None = None, text_column: str | None = None,
                      delimiter: str | None = None) -> ConvertReport:
    """A TSV/CSV transcript table with a header row -> an ASR manifest; bad rows are skipped and reported.

    Columns default to audio/path/file/filename and text/sentence/transcript/transcription; audio
    paths resolve against `audio_dir`, by default `clips/` beside the table (Common Voice) when it
    exists, else the table's folder.

        table_to_manifest("cv/en/validated.tsv", "data/train.jsonl").rows_written   # 2
        # data/train.jsonl: {"audio": "../cv/en/clips/a.mp3", "text": "Hello there."}, ...
    """
    table, out = str(table), str(out)
    _check_out(out)
    if not os.path.isfile(table):
        raise DataError(table, "transcript table not found; check the path")
    if os.path.abspath(out) == os.path.abspath(table):
        raise DataError(out, "the manifest would overwrite the table; give --out another file")
    delimiter = delimiter or _delimiter_for(table)
    if len(delimiter) != 1:
        raise DataError(table, f"the delimiter must be one character, got {delimiter!r}")
    audio_dir = _default_audio_dir(table) if audio_dir is None else str(audio_dir)
    if not os.path.isdir(audio_dir):
        raise DataError(audio_dir, "audio folder not found; --audio-dir must be the folder the table's paths are "
                                   "relative to")
    report = ConvertReport(table, out, audio_dir=audio_dir)
    with open(table, "rb") as f:
        rows = _table_rows(f, table, delimiter, report)
        header = next(rows, None)
        if header is None:
            raise DataError(table, "the table is empty; expected a header row naming the columns")
        names = [name.strip() for name in header[1]]
        a = _column(table, names, audio_column, AUDIO_COLUMNS, "audio", "--audio-column")
        t = _column(table, names, text_column, TEXT_COLUMNS, "transcript", "--text-column")
        with _ManifestWriter(out) as writer:
            for line, fields in rows:
                source = f"{table}:{line}"
                if len(fields) != len(names):
                    report.skip(source, f"{len(fields)} fields where the header has {len(names)}; check the "
                                        f"delimiter ({delimiter!r}) and stray separators in the row")
                else:
                    _convert_row(writer, report, source, audio_dir, fields[a], fields[t])
    return report


def librispeech_to_manifest(root: str | os.PathLike, out: str | os.PathLike) -> ConvertReport:
    """Every `*.trans.txt` under `root` (lines `UTTERANCE-ID TRANSCRIPT`, audio `UTTERANCE-ID.flac` beside it).

        librispeech_to_manifest("LibriSpeech/dev-clean", "data/dev.jsonl").rows_written   # 2703
        # data/dev.jsonl: {"audio": "../LibriSpeech/dev-clean/84/121123/84-121123-0000.flac", "text": "GO DO YOU HEAR"}
    """
    root, out = str(root), str(out)
    _check_out(out)
    if not os.path.isdir(root):
        raise DataError(root, "LibriSpeech folder not found; give the folder holding SPEAKER/CHAPTER/ folders, "
                              "e.g. LibriSpeech/train-clean-100")
    files = _trans_files(root)
    first = next(files, None)
    if first is None:
        raise DataError(root, "no *.trans.txt file under this folder; expected the LibriSpeech layout "
                              "SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt with SPEAKER-CHAPTER-NNNN.flac beside it")
    report = ConvertReport(root, out)
    with _ManifestWriter(out) as writer:
        for trans in itertools.chain([first], files):
            folder = os.path.dirname(trans)
            with open(trans, "rb") as f:
                for number, line in enumerate(_utf8_lines(f, trans), start=1):
                    if line.strip():
                        utterance, text = (line.split(None, 1) + [""])[:2]
                        _convert_row(writer, report, f"{trans}:{number}", folder, f"{utterance}.flac", text)
    return report


def dataset_to_manifest(path: str | os.PathLike, out: str | os.PathLike, media_dir: str | os.PathLike | None = None,
                        columns: dict | None = None) -> ConvertReport:
    """A Hugging Face dataset (save_to_disk folder, .parquet or .arrow files) -> a manifest, each embedded
    clip or image written to a file under `media_dir` (default: `media/` beside the manifest).

    `columns` maps manifest keys to the dataset's columns, e.g. {"text": "sentence"} for Common Voice-style
    data; rows keep the manifest forms (ASR: audio + text; LLaVA: image + conversations).

        dataset_to_manifest("cv_saved/", "data/train.jsonl", columns={"text": "sentence"}).rows_written  # 3
        # data/train.jsonl: {"audio": "media/00000000-a.mp3", "text": "Hello there."}, ...
    """
    from mmtune.data.sources import HFSource

    path, out = str(path), str(out)
    _check_out(out)
    source = HFSource(path, columns)
    report = ConvertReport(path, out)
    with _ManifestWriter(out) as writer:
        media = os.path.abspath(str(media_dir)) if media_dir else os.path.join(writer.folder, "media")
        os.makedirs(media, exist_ok=True)
        for i in range(len(source)):
            label, row = source.row(i)
            row = {k: _media_file(v, media, i, writer.folder) if k in ("audio", "image") else v for k, v in row.items()}
            try:
                parse_row(row, writer.folder)
            except DataError as err:
                report.skip(label, err.reason)
                continue
            writer.write(row)
            report.rows_written += 1
    return report


def _media_file(value, media: str, i: int, folder: str):
    """An embedded {"bytes", "path"} value -> the relative path of the file it is written to (lists too)."""
    if isinstance(value, list):
        return [_media_file(v, media, i, folder) for v in value]
    if isinstance(value, dict) and value.get("bytes"):
        name = os.path.basename(value.get("path") or "media.bin")
        target = os.path.join(media, f"{i:08d}-{name}")
        with open(target, "wb") as f:
            f.write(value["bytes"])
        return _relative(target, folder)
    if isinstance(value, dict) and value.get("path"):
        return value["path"]
    return value


# ----------------------------------------------------------------------------- rows


def _convert_row(writer: "_ManifestWriter", report: ConvertReport, source: str, base: str, audio: str,
                 text: str) -> None:
    """Check one (audio, transcript) pair and write it as {"audio": PATH, "text": TEXT}, or skip it."""
    audio, text = audio.strip(), text.strip()
    if not audio:
        return report.skip(source, "no audio path in the row")
    if not text:
        return report.skip(source, "empty transcript")
    path = os.path.abspath(os.path.join(base, audio))  # an absolute `audio` ignores `base`
    if not os.path.isfile(path):
        return report.skip(source, MISSING_AUDIO + path)
    row = {"audio": _relative(path, writer.folder), "text": text}
    try:
        parse_row(row, writer.folder)  # what read_manifest would reject is not written
    except DataError as err:
        return report.skip(source, err.reason)
    writer.write(row)
    report.rows_written += 1


def _table_rows(f: BinaryIO, table: str, delimiter: str, report: ConvertReport) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, fields) per non-blank record; TSV is read unquoted, as Common Voice writes it."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # CV sentences may start with '"'
    reader = csv.reader(_utf8_lines(f, table), delimiter=delimiter, quoting=quoting)
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a field over csv.field_size_limit(); the reader goes on after it
            report.skip(f"{table}:{line}", f"cannot read the row: {err}")
            continue
        if any(value.strip() for value in fields):
            yield line, fields


def _utf8_lines(f: BinaryIO, path: str) -> Iterator[str]:
    """Decoded lines of a binary file (newlines kept); the first non-UTF-8 line raises a DataError naming it."""
    for number, raw in enumerate(f, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{number}", f"line is not valid UTF-8 at byte {err.start + 1} ({err.reason}); "
                                                "re-save the file as UTF-8") from None
        yield line.lstrip("\ufeff") if number == 1 else line


def _column(table: str, names: list[str], given: str | None, candidates: tuple[str, ...], what: str,
            flag: str) -> int:
    """Index of the `given` column, else of the first of `candidates` in the header (any case)."""
    columns = ", ".join(repr(n) for n in names)
    if given is not None:
        if given in names:
            return names.index(given)
        raise DataError(table, f"no column {given!r} ({flag}); the table's columns are {columns}")
    lowered = [n.lower() for n in names]
    for candidate in candidates:
        if candidate in lowered:
            return lowered.index(candidate)
    raise DataError(table, f"no {what} column among the table's columns {columns} (looked for "
                           f"{', '.join(candidates)}); pass {flag} NAME")


def _trans_files(root: str) -> Iterator[str]:
    """`*.trans.txt` under root, in sorted folder order (walked lazily)."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".trans.txt"):
                yield os.path.join(folder, name)


def _delimiter_for(table: str) -> str:
    ext = os.path.splitext(table)[1].lower()
    if ext not in DELIMITERS:
        raise DataError(table, f"cannot tell the delimiter from the extension {ext or '(none)'!r}; name the file "
                               ".tsv or .csv, or pass --delimiter")
    return DELIMITERS[ext]


def _default_audio_dir(table: str) -> str:
    folder = os.path.dirname(os.path.abspath(table))
    clips = os.path.join(folder, "clips")
    return clips if os.path.isdir(clips) else folder


def _relative(path: str, folder: str) -> str:
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive on Windows
        return path


def _check_out(out: str) -> None:
    if not out.lower().endswith(".jsonl"):
        raise DataError(out, "the manifest must be a .jsonl file (one JSON object per line), e.g. --out "
                             "data/train.jsonl")


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


class _ManifestWriter:
    """JSON lines to a hidden temporary file beside `out`, renamed to `out` on a clean exit with rows written;
    any other exit removes it and leaves `out` as it was."""

    def __init__(self, out: str):
        self.out = os.path.abspath(out)
        self.folder = os.path.dirname(self.out)
        self.temp = os.path.join(self.folder, f".{os.path.basename(self.out)}.{uuid.uuid4().hex[:8]}.tmp")
        self.rows = 0

    def __enter__(self) -> "_ManifestWriter":
        os.makedirs(self.folder, exist_ok=True)
        self.file = open(self.temp, "x", encoding="utf-8", newline="\n", buffering=1 << 20)
        return self

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None and self.rows:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None and self.rows:
                os.replace(self.temp, self.out)
        finally:
            if os.path.exists(self.temp):
                os.remove(self.temp)
        return False
