"""The length index: every row's token count from a cheap pass, cached beside the data.

    index, source = load_index("data/train.jsonl", encoder, cfg.data)   # built once, then read back
    index.tokens[k], index.rows[k]      # sample k: its token count and its row in the source

The pass reads each row and its media *headers* (audio durations from soundfile.info, images
only checked to exist; their token count is the tower's), renders the chat with the tokenizer and
expands the placeholders, in worker processes with a progress bar. Nothing is decoded. Rows that
fail (bad JSON, a missing file, an unreadable header, over-length) are kept as DataErrors.

Cache: `.mmtune_index/<file name>/<key>.npz` in the data's folder (or ~/.cache/mmtune/index when that
is read-only). The key hashes the data files' size and mtime and every setting that changes a
length (tokenizer, chat template, instruction, system prompt, max_length, truncation, train_on,
the towers' token counts, speed factors), so a changed file or setting builds a new index and a
second run with the same ones starts at once. Memory: a few numbers per row (about 40 bytes).
"""

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from mmtune.config import DataConfig
from mmtune.console import progress_bar
from mmtune.data.encode import SampleEncoder, one_thread
from mmtune.data.sources import cache_folder, fingerprint, open_source, read_sample
from mmtune.errors import DataError

log = logging.getLogger("mmtune")
INDEX_VERSION = 1  # bump when what the index stores or how lengths are counted changes
CHUNK_ROWS = 512  # rows per task handed to an index worker
COLUMNS = {"rows": np.int64, "tokens": np.int32, "supervised": np.int32, "audio_seconds": np.float32,
           "audio": np.int16, "images": np.int16, "truncated": np.bool_}


@dataclass
class LengthIndex:
    """Per usable sample (sorted by source row): its row, tokens, supervised tokens, media sizes."""

    rows: np.ndarray  # (N,) int64, row number in the source
    tokens: np.ndarray  # (N,) int32, input length with placeholders expanded (longest speed variant)
    supervised: np.ndarray  # (N,) int32
    audio_seconds: np.ndarray  # (N,) float32, summed clip durations
    audio: np.ndarray  # (N,) int16, clips
    images: np.ndarray  # (N,) int16
    truncated: np.ndarray  # (N,) bool, cut to data.max_length in text
    skipped: list[DataError] = field(default_factory=list)  # rows that cannot be used, in row order
    source_rows: int = 0
    cached: bool = False  # read back from the cache
    seconds: float = 0.0  # to build or to read


def load_index(path: str, encoder: SampleEncoder, data: DataConfig, num_workers: int = 2,
               progress: bool = True):
    """-> (LengthIndex, source): read from the cache when its key matches, else built and cached."""
    started = time.perf_counter()
    folder = cache_folder(path)
    key = index_key(path, encoder, data)
    cache = os.path.join(folder, f"{key}.npz")
    if os.path.isfile(cache):
        index, arrays = _read(cache)
        source = open_source(path, folder, data.columns, arrays)
        index.cached, index.seconds = True, time.perf_counter() - started
        return index, source
    source = open_source(path, folder, data.columns)
    index = build_index(source, encoder, data, num_workers, progress)
    try:
        _write(cache, index, source.arrays())
    except OSError as err:  # a full disk or a folder that turned out read-only: this run goes on without it
        log.warning("could not cache the length index in %s (%s); the next run builds it again", cache, err)
    index.seconds = time.perf_counter() - started
    log.info("indexed %s: %d rows in %.1f s (%d unusable); cached in %s", path, index.source_rows,
             index.seconds, len(index.skipped), cache)
    return index, source


def build_index(source, encoder: SampleEncoder, data: DataConfig, num_workers: int = 2,
                progress: bool = True) -> LengthIndex:
    """Measure every row of `source`; worker processes when there are enough rows to pay for them."""
    chunks = [(a, min(a + CHUNK_ROWS, len(source))) for a in range(0, len(source), CHUNK_ROWS)]
    bar = progress_bar(total=len(source), desc=f"indexing {source.path}", unit="row", disable=not progress, leave=False)
    parts = map_chunks(_measure_chunk, (source, encoder, data.instruction, data.system), chunks, num_workers, bar)
    columns = {c: np.concatenate([p[0][c] for p in parts]) if parts else np.zeros(0, t) for c, t in COLUMNS.items()}
    skipped = [e for p in parts for e in p[1]]
    return LengthIndex(**columns, skipped=skipped, source_rows=len(source))


def map_chunks(fn, job, chunks: list, num_workers: int, bar) -> list:
    """[fn(job, chunk) for chunk in chunks], in order, in `num_workers` forked processes when there is
    more than one chunk. `job` reaches each worker once (not once per chunk); each result's last item
    is the rows it did, for the progress bar."""
    results = []
    if num_workers > 0 and len(chunks) > 1:
        quiet_tokenizers_in_forks()
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(min(num_workers, len(chunks)), mp_context=context, initializer=_init_worker,
                                 initargs=(fn, job)) as pool:
            try:  # a pool whose worker dies raises here (multiprocessing.Pool would wait forever)
                for result in pool.map(_run_chunk, chunks):
                    results.append(result)
                    bar.update(result[-1])
            except BrokenProcessPool:
                done = sum(r[-1] for r in results)
                raise DataError(str(getattr(job[0], "path", "data")), f"a worker process died after {done} rows "
                                f"(killed for memory, or a crash in a media library); run again with "
                                f"data.num_workers=0 to see the row, or `mmtune data check` on the data") from None
    else:
        for chunk in chunks:
            results.append(fn(job, chunk))
            bar.update(results[-1][-1])
    bar.close()
    return results


def quiet_tokenizers_in_forks() -> None:
    """Set TOKENIZERS_PARALLELISM=false (if unset) before forking workers: the Rust tokenizer's thread
    pool cannot survive a fork, and says so in every forked process otherwise. Worker processes
    tokenize one row at a time, so they lose nothing."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_WORKER_JOB = None  # (fn, job) of this pool worker process, set once by _init_worker


def _init_worker(fn, job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = (fn, job)


def _run_chunk(chunk):
    fn, job = _WORKER_JOB
    return fn(job, chunk)


def _measure_chunk(job, bounds: tuple[int, int]):
    """Rows [a, b) -> (column arrays of the usable ones, their DataErrors, rows done)."""
    source, encoder, instruction, system = job
    values = {c: [] for c in COLUMNS}
    errors = []
    with one_thread():
        for i in range(*bounds):
            try:
                m = encoder.measure(read_sample(source, i, instruction, system))
            except DataError as e:
                errors.append(e)
                continue
            for name, value in (("rows", i), ("tokens", m.tokens), ("supervised", m.supervised),
                                ("audio_seconds", m.audio_seconds), ("audio", m.audio), ("images", m.images),
                                ("truncated", m.truncated)):
                values[name].append(value)
    columns = {c: np.array(values[c], dtype=t) for c, t in COLUMNS.items()}
    return columns, errors, bounds[1] - bounds[0]


def index_key(path: str, encoder: SampleEncoder, data: DataConfig) -> str:
    """A hash of the data files' size and mtime and every setting that changes a row's length."""
    spec = encoder.spec
    settings = {"version": INDEX_VERSION, "files": fingerprint(path), "tokenizer": tokenizer_fingerprint(
        encoder.tokenizer), "instruction": data.instruction, "system": data.system, "max_length": data.max_length,
        "truncation": data.truncation, "train_on": data.train_on, "columns": data.columns,
        "n_mels": spec.n_mels, "stack": spec.audio_stack, "audio_window": spec.audio_window,
        "audio_pad_frames": spec.audio_pad_frames, "max_audio_seconds": data.max_audio_seconds,
        "image": spec.image is not None,
        "image_tokens": spec.image_tokens, "max_tiles": spec.max_tiles, "speeds": encoder.speeds,
        "special_tokens": data.special_tokens}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]


def tokenizer_fingerprint(tokenizer) -> str:
    """Vocabulary, merges, special tokens and chat template, hashed."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    text += str(getattr(tokenizer, "chat_template", None)) + str(tokenizer.all_special_tokens)
    return hashlib.sha256(text.encode()).hexdigest()


def _write(cache: str, index: LengthIndex, source_arrays: dict) -> None:
    """Atomically: a temporary file renamed, so a killed run never leaves half an index."""
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    meta = {"skipped": [[e.source, e.reason] for e in index.skipped], "source_rows": index.source_rows}
    arrays = {c: getattr(index, c) for c in COLUMNS} | {f"source.{k}": v for k, v in source_arrays.items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = f"{cache}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, cache)


def _read(cache: str) -> tuple[LengthIndex, dict]:
    with np.load(cache, allow_pickle=False) as f:
        meta = json.loads(f["meta"].tobytes())
        columns = {c: f[c] for c in COLUMNS}
        arrays = {k[len("source."):]: f[k] for k in f.files if k.startswith("source.")}
    skipped = [DataError(source, reason) for source, reason in meta["skipped"]]
    return LengthIndex(**columns, skipped=skipped, source_rows=meta["source_rows"]), arrays
