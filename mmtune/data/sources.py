"""Where rows come from: random access by row number, without holding the rows in memory.

    source = open_source("data/train.jsonl", index_dir)   # or .json, .parquet, .arrow, a save_to_disk
    len(source)                                            # folder, *.tar shards (WebDataset layout)
    label, row = source.row(17)    # ("data/train.jsonl:18", {"audio": ..., "text": ...}) or a DataError

Each kind keeps only numbers per row (byte offsets, line numbers) in numpy arrays; `arrays()`
returns them so the length index caches them, and `open_source(..., arrays=...)` reopens without
scanning again. A row is read when it is drawn, in whichever process draws it.

    JSONL         byte offset and line number of each non-blank line
    LLaVA .json   the list is read once and rewritten as JSON lines in the index folder
    Hugging Face  datasets.load_from_disk / Dataset.from_parquet / Dataset.from_file, memory-mapped;
                  rows read from the Arrow table, so Audio/Image columns come as {"bytes", "path"}
                  (decoded by mmtune, not datasets);
                  `data.columns` renames columns to manifest keys, e.g. {text: sentence}
    tar shards    KEY.json beside KEY.flac (or .wav/.mp3/.ogg/.opus) and/or KEY.png (.jpg/.jpeg/.webp)
                  in each shard; members are read by offset
"""

import glob
import hashlib
import json
import os
import tarfile

import numpy as np

from mmtune.data.formats import Sample, json_type, parse_row, row_language
from mmtune.errors import DataError

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
TAR_KINDS = {**{e: "audio" for e in AUDIO_EXTENSIONS}, **{e: "image" for e in IMAGE_EXTENSIONS}}


def source_files(path: str) -> list[str]:
    """The files a source reads: the path itself, a glob, or a folder's *.tar / *.parquet / *.arrow files."""
    if any(c in path for c in "*?["):
        files = sorted(glob.glob(path))
    elif os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "state.json")):  # datasets.save_to_disk
            return sorted(glob.glob(os.path.join(path, "*.arrow"))) + [os.path.join(path, "state.json")]
        files = [f for ext in ("tar", "parquet", "arrow") for f in sorted(glob.glob(os.path.join(path, f"*.{ext}")))]
        files = [f for f in files if f.endswith(_kind_ext(files[0]))] if files else []
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(path, "manifest file not found; check the path (a config's relative paths resolve "
                              "against the config file's folder)")
    if not files:
        raise DataError(path, "no data found: give a .jsonl/.json manifest, .parquet/.arrow files, a "
                              "datasets.save_to_disk folder, or .tar shards (a file, a glob or a folder)")
    return files


def _kind_ext(path: str) -> str:
    return os.path.splitext(path)[1]


def source_kind(path: str) -> str:
    files = source_files(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json")):
        return "hf"
    ext = _kind_ext(files[0]).lower()
    kinds = {".jsonl": "jsonl", ".json": "json", ".parquet": "hf", ".arrow": "hf", ".tar": "tar"}
    if ext not in kinds:
        raise DataError(path, f"unknown data extension {ext!r}; use .jsonl (one JSON object per line), .json "
                              f"(a LLaVA list), .parquet, .arrow, a datasets.save_to_disk folder, or .tar shards")
    return kinds[ext]


def fingerprint(path: str) -> list:
    """[file, size, mtime] of every file the source reads: the index is rebuilt when one changes."""
    return [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in source_files(path)]


def read_sample(source, i: int, instruction: str = "Transcribe the audio.", system: str | None = None) -> Sample:
    """Row i of `source` as a validated Sample; raises DataError naming the row."""
    label, row = source.row(i)
    if isinstance(row, DataError):
        raise row
    try:
        return Sample(parse_row(row, source.base, instruction, system), label, row_language(row))
    except DataError as err:
        raise DataError(label, err.reason) from None


def iter_samples(path: str, instruction: str = "Transcribe the audio.", system: str | None = None,
                 columns: dict | None = None):
    """Yield one Sample or DataError per row of `path`, in row order (problems with the whole file raise)."""
    path = str(path)
    source = open_source(path, cache_folder(path), columns)
    for i in range(len(source)):
        try:
            yield read_sample(source, i, instruction, system)
        except DataError as err:
            yield err


def read_manifest(path, instruction: str = "Transcribe the audio.", system: str | None = None,
                  on_bad: str = "error") -> tuple[list[Sample], list[DataError]]:
    """Every row of a (small) source as Samples, for tools and tests; training reads rows when drawn.

    on_bad="error" raises the first bad row's DataError; "skip" returns the bad rows' errors beside.
        samples, bad = read_manifest("data/train.jsonl", on_bad="skip")
        samples[0].source  # "data/train.jsonl:1"
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    samples, errors = [], []
    for item in iter_samples(str(path), instruction, system):
        if isinstance(item, DataError) and on_bad == "error":
            raise item
        (errors if isinstance(item, DataError) else samples).append(item)
    return samples, errors


def cache_folder(path: str) -> str:
    """Where files made from a source are kept (its length index, a .json list as JSON lines): beside
    the data when its folder is writable, else under ~/.cache/mmtune/index."""
    path = os.path.abspath(path.rstrip("/"))
    name = os.path.basename(path).replace("*", "_")
    parent = os.path.dirname(path)
    if os.access(parent, os.W_OK):
        return os.path.join(parent, ".mmtune_index", name)
    digest = hashlib.sha1(path.encode()).hexdigest()[:12]
    return os.path.join(os.path.expanduser("~/.cache/mmtune/index"), f"{name}-{digest}")


def open_source(path: str, index_dir: str, columns: dict | None = None, arrays: dict | None = None):
    """The source at `path` (kind from the extension); `arrays` from a cached index skip the scan."""
    kind = source_kind(path)
    if kind == "jsonl":
        return JsonlSource(path, path, arrays)
    if kind == "json":
        rows = _json_lines_file(path, index_dir)
        if not os.path.isfile(rows):
            _json_as_jsonl(path, rows)
            arrays = None  # offsets of a copy made now are scanned now
        return JsonlSource(path, rows, arrays, list_positions=True)
    if kind == "hf":
        return HFSource(path, columns)
    return TarSource(path, arrays)


# ----------------------------------------------------------------------------- JSON lines


class JsonlSource:
    """Rows of a JSON-lines file, read by byte offset. `path` names rows; `file` is read."""

    def __init__(self, path: str, file: str, arrays: dict | None = None, list_positions: bool = False):
        self.path, self.file, self.list_positions = path, file, list_positions
        self.offsets, self.lines = (arrays["offsets"], arrays["lines"]) if arrays else _scan_lines(file)
        self.base = os.path.dirname(os.path.abspath(path))
        self._handle = None  # opened on first read, in the process that reads

    def __len__(self) -> int:
        return len(self.offsets)

    def arrays(self) -> dict:
        return {"offsets": self.offsets, "lines": self.lines}

    def label(self, i: int) -> str:
        if self.list_positions:  # line k + 1 of the rewritten file is item k of the list
            return f"{self.path}:#{int(self.lines[i]) - 1}"
        return f"{self.path}:{self.lines[i]}"

    def shard_numbers(self, rows):
        return None  # one file: no shards to read in turn

    def row(self, i: int):
        label = self.label(i)
        if self._handle is None or self._handle[0] != os.getpid():
            self._handle = (os.getpid(), open(self.file, "rb"))  # a forked worker opens its own
        f = self._handle[1]
        f.seek(int(self.offsets[i]))
        return label, decode_json_line(f.readline(), label, first=int(self.lines[i]) == 1)

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}


def _scan_lines(file: str) -> tuple[np.ndarray, np.ndarray]:
    """(byte offset, 1-based line number) of each non-blank line, int64 and int32."""
    if not os.path.isfile(file):
        raise DataError(file, "manifest file not found; check the path")
    offsets, lines, position = [], [], 0
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                offsets.append(position)
                lines.append(number)
            position += len(raw)
    return np.array(offsets, dtype=np.int64), np.array(lines, dtype=np.int32)


def decode_json_line(raw: bytes, label: str, first: bool = False):
    """One line's bytes -> the decoded JSON value, or a DataError naming the row."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return DataError(label, f"line is not valid UTF-8 at byte {err.start + 1} ({err.reason}); "
                                f"re-save the manifest as UTF-8")
    line = line.lstrip("\ufeff") if first else line
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return DataError(label, f"invalid JSON at column {err.colno}: {err.msg}; each line must be one JSON object")


def _json_lines_file(path: str, index_dir: str) -> str:
    """The JSON-lines copy of a .json list, named by the list file's size and mtime: a cached index's
    offsets always point into the copy of the very file they were measured on."""
    digest = hashlib.sha1(json.dumps(fingerprint(path)).encode()).hexdigest()[:12]
    return os.path.join(index_dir, f"rows-{digest}.jsonl")


def _json_as_jsonl(path: str, out: str) -> str:
    """A LLaVA .json list rewritten as JSON lines at `out` (the list is read once, here).
    Line k + 1 holds list item k, so labels keep the list position "file.json:#k"."""
    if not os.path.isfile(path):
        raise DataError(path, "manifest file not found; check the path")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}", f"file is not valid UTF-8 ({err.reason}); re-save the manifest "
                                          f"as UTF-8") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}", f"invalid JSON at column {err.colno}: {err.msg}") from None
    if not isinstance(rows, list):
        raise DataError(path, f"a .json manifest must be a list of LLaVA rows, got a JSON {json_type(rows)}; "
                              "use .jsonl for one object per line")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- Hugging Face datasets


class HFSource:
    """A datasets.Dataset, memory-mapped; rows come back as manifest-style dicts."""

    def __init__(self, path: str, columns: dict | None = None):
        self.path, self.columns = path, dict(columns or {})
        self.base = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.path.abspath(path)
        self.dataset = _load_hf(path)
        self.rows = self.dataset.with_format("arrow")  # row i -> a one-row pyarrow Table, nothing decoded
        missing = sorted(set(self.columns.values()) - set(self.dataset.column_names))
        if missing:
            raise DataError(path, f"data.columns names {missing}, which the dataset lacks; its columns are "
                                  f"{self.dataset.column_names}")

    def __len__(self) -> int:
        return len(self.dataset)

    def arrays(self) -> dict:
        return {}

    def label(self, i: int) -> str:
        return f"{self.path}:#{i}"

    def shard_numbers(self, rows):
        return None  # memory-mapped Arrow: any row is as near as any other

    def row(self, i: int):
        raw = self.rows[int(i)].to_pylist()[0]  # Arrow storage (media as {"bytes", "path"}), indices applied
        renamed = {key: raw[column] for key, column in self.columns.items()}
        return self.label(i), {**{k: v for k, v in raw.items() if k not in self.columns.values()}, **renamed}


def _load_hf(path: str):
    try:
        import datasets
    except ImportError:
        raise DataError(path, "reading Parquet/Arrow/datasets folders needs `datasets`: "
                              "pip install 'mmtune[datasets]'") from None
    files = [f for f in source_files(path) if not f.endswith("state.json")]
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "state.json")):
        dataset = datasets.load_from_disk(path)
    elif files[0].endswith(".parquet"):
        dataset = datasets.Dataset.from_parquet(files)  # converted to Arrow once, in datasets' cache
    else:
        dataset = datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
    return dataset  # rows are read from its Arrow table, so datasets decodes nothing (no torchcodec needed)


# ----------------------------------------------------------------------------- tar shards


class TarSource:
    """WebDataset-layout shards: each KEY.json with its KEY.<audio ext> and/or KEY.<image ext>."""

    COLUMNS = ("shard", "json_offset", "json_size", "audio_offset", "audio_size", "audio_ext", "image_offset",
               "image_size", "image_ext")

    def __init__(self, path: str, arrays: dict | None = None):
        self.path = path
        self.shards = source_files(path)
        self.base = os.path.dirname(os.path.abspath(self.shards[0]))
        self.table = arrays if arrays is not None else _scan_shards(self.shards)
        self.keys = self.table["keys"]
        self._handle = None  # (pid, shard, file) of the one shard this process reads now

    def __len__(self) -> int:
        return len(self.table["shard"])

    def arrays(self) -> dict:
        return self.table

    def label(self, i: int) -> str:
        return f"{self.shards[int(self.table['shard'][i])]}:{self.keys[i]}"

    def shard_numbers(self, rows):
        """(len(rows),) the shard each row is in."""
        return self.table["shard"][rows]

    def row(self, i: int):
        label = self.label(i)
        t = self.table
        row = decode_json_line(self._read(i, "json_offset", "json_size"), label)
        if isinstance(row, DataError) or not isinstance(row, dict):
            return label, row
        name = os.path.join(self.shards[int(t["shard"][i])], str(self.keys[i]))
        for kind, key in (("audio", "audio"), ("image", "image")):
            if t[f"{kind}_size"][i] >= 0 and key not in row:
                ext = ALL_EXTENSIONS[int(t[f"{kind}_ext"][i])]
                row[key] = {"bytes": self._read(i, f"{kind}_offset", f"{kind}_size"), "path": f"{name}.{ext}"}
        return label, row

    def _read(self, i: int, offset: str, size: str) -> bytes:
        shard = int(self.table["shard"][i])
        if self._handle is None or self._handle[:2] != (os.getpid(), shard):
            if self._handle is not None and self._handle[0] == os.getpid():
                self._handle[2].close()  # one open shard per process, however many shards there are
            self._handle = (os.getpid(), shard, open(self.shards[shard], "rb"))
        f = self._handle[2]
        f.seek(int(self.table[offset][i]))
        return f.read(int(self.table[size][i]))

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}


ALL_EXTENSIONS = AUDIO_EXTENSIONS + IMAGE_EXTENSIONS


def _scan_shards(shards: list[str]) -> dict:
    """One pass over the members' headers of every shard -> per-sample offsets (no member data read)."""
    rows: list[dict] = []
    for s, shard in enumerate(shards):
        try:
            with tarfile.open(shard, mode="r:") as tar:
                by_key: dict = {}
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, name = os.path.split(member.name)
                    stem, _, ext = name.partition(".")  # WebDataset: the key ends at the name's first dot
                    by_key.setdefault(os.path.join(folder, stem), {})[ext.lower()] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError) as err:
            raise DataError(shard, f"cannot read the tar shard: {err}; re-create it (tar -cf) or drop it") from None
        for key, members in by_key.items():
            if "json" in members:
                rows.append(_tar_row(s, key, members))
    table = {c: np.array([r[c] for r in rows], dtype=np.int64) for c in TarSource.COLUMNS}
    table["keys"] = np.array([r["key"] for r in rows], dtype=str)
    return table


def _tar_row(shard: int, key: str, members: dict) -> dict:
    row = {"shard": shard, "key": key, "json_offset": members["json"][0], "json_size": members["json"][1]}
    for kind, extensions in (("audio", AUDIO_EXTENSIONS), ("image", IMAGE_EXTENSIONS)):
        ext = next((e for e in extensions if e in members), None)
        offset, size = members[ext] if ext else (0, -1)
        row |= {f"{kind}_offset": offset, f"{kind}_size": size,
                f"{kind}_ext": ALL_EXTENSIONS.index(ext) if ext else -1}
    return row
