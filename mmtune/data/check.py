"""`mmtune data check`: read every row of a data source and its media, and say what is wrong where.

    report = check_data("data/train.jsonl", encoder=None)   # encoder: the length index too
    print(format_report(report)); exit(1 if report.bad else 0)

With an encoder the check builds (or reads back) the same cached length index training uses, so
token lengths and over-length rows are the ones training sees, and a later `mmtune train` starts
at once. Then every clip and image is decoded (in worker processes), unless `decode=False`.
"""

from dataclasses import dataclass, field

from mmtune.audio.io import SAMPLE_RATE, load_audio
from mmtune.config import DataConfig
from mmtune.console import progress_bar
from mmtune.data.encode import SampleEncoder, named, one_thread
from mmtune.data.index import CHUNK_ROWS, load_index, map_chunks
from mmtune.data.sources import cache_folder, open_source, read_sample
from mmtune.errors import DataError
from mmtune.vision.io import load_image


@dataclass
class CheckReport:
    path: str
    rows: int = 0
    good: int = 0
    bad: list[DataError] = field(default_factory=list)
    audio_clips: int = 0
    images: int = 0
    audio_seconds: list[float] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    token_lengths: list[int] = field(default_factory=list)
    over_length: list[str] = field(default_factory=list)  # sources of rows over data.max_length (dropped or cut)
    truncated: list[str] = field(default_factory=list)  # those of them cut in text (truncation: text), still good
    index_cached: bool = False


def check_data(path: str, encoder: SampleEncoder | None = None, data: DataConfig | None = None,
               decode: bool = True, progress: bool = True) -> CheckReport:
    """Every row of `path` (and its media decoded, unless decode=False), every problem collected."""
    data = data or (encoder.data if encoder is not None else DataConfig())
    report = CheckReport(path)
    if encoder is not None:
        index, source = load_index(path, encoder, data, data.num_workers, progress)
        rows = index.rows.tolist()
        report.rows, report.index_cached = index.source_rows, index.cached
        report.bad = list(index.skipped)
        report.over_length = [e.source for e in index.skipped if e.reason.startswith("over-length")]
        report.truncated = [source.label(r) for r, cut in zip(rows, index.truncated.tolist()) if cut]
        report.over_length += report.truncated
        report.token_lengths = index.tokens.tolist()
    else:
        source = open_source(path, cache_folder(path), data.columns)
        rows = list(range(len(source)))
        report.rows = len(source)
    if decode or encoder is None:
        _decode_all(source, rows, data, report, progress)
    report.good = report.rows - len(report.bad)
    report.bad.sort(key=_line_of)
    return report


def _decode_all(source, rows: list[int], data: DataConfig, report: CheckReport, progress: bool) -> None:
    """Decode every clip and image of `rows` in data.num_workers processes; collect sizes and errors."""
    chunks = [rows[a: a + CHUNK_ROWS] for a in range(0, len(rows), CHUNK_ROWS)]
    bar = progress_bar(total=len(rows), desc=f"checking {source.path}", unit="row", disable=not progress, leave=False)
    job = (source, data.instruction, data.system, data.max_audio_seconds)
    for part in map_chunks(_decode_chunk, job, chunks, data.num_workers, bar):
        _merge(report, part)


def _merge(report: CheckReport, part) -> None:
    seconds, sizes, errors, _ = part
    known = {e.source for e in report.bad}
    report.audio_seconds += seconds
    report.image_sizes += sizes
    report.audio_clips += len(seconds)
    report.images += len(sizes)
    report.bad += [e for e in errors if e.source not in known]


def _decode_chunk(job, rows: list[int]):
    """-> (clip seconds, image sizes, DataErrors, rows done) for one chunk of rows."""
    source, instruction, system, max_seconds = job
    seconds, sizes, errors = [], [], []
    with one_thread():
        for r in rows:
            try:
                sample = read_sample(source, r, instruction, system)
                with named(sample.source):
                    row_seconds, row_sizes = _media_sizes(sample, max_seconds)
            except DataError as e:
                errors.append(e)
                continue
            seconds += row_seconds
            sizes += row_sizes
    return seconds, sizes, errors, len(rows)


def _media_sizes(sample, max_seconds: float) -> tuple[list[float], list[tuple[int, int]]]:
    seconds, sizes = [], []
    for part in (p for m in sample.messages for p in m["content"]):
        if part["type"] == "audio":
            # a clip over the limit is refused from its header, before it is decoded
            seconds.append(len(load_audio(part["path"], SAMPLE_RATE, part.get("bytes"), max_seconds)) / SAMPLE_RATE)
        elif part["type"] == "image":
            sizes.append(load_image(part["path"], data=part.get("bytes")).size)
    return seconds, sizes


def _line_of(error: DataError) -> int:
    tail = error.source.rsplit(":", 1)[-1].lstrip("#")
    return int(tail) if tail.isdigit() else 0


def _range(values, unit: str = "", fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    return f"{fmt.format(min(values))}{unit} .. {fmt.format(max(values))}{unit}"


def format_report(report: CheckReport, max_length: int | None = None) -> str:
    lines = [f"{report.path}: {report.rows} rows, {report.good} good, {len(report.bad)} bad",
             f"  audio clips: {report.audio_clips} (duration {_range(report.audio_seconds, ' s')}, "
             f"total {sum(report.audio_seconds) / 60:.1f} min)",
             f"  images: {report.images} (width {_range([w for w, _ in report.image_sizes], ' px', '{}')}, "
             f"height {_range([h for _, h in report.image_sizes], ' px', '{}')})"]
    if report.token_lengths:
        lengths = sorted(report.token_lengths)
        lines.append(f"  tokens per row (media included): min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
                     f"max {lengths[-1]}" + (f", limit {max_length}" if max_length else ""))
    if report.over_length:
        cut = f" ({len(report.truncated)} cut to the limit in text)" if report.truncated else ""
        lines.append(f"  over-length rows: {len(report.over_length)}{cut}")
    for source in report.truncated:
        lines.append(f"  TRUNCATED {source}: over the token limit; the text past it is cut (data.truncation: text)")
    for err in report.bad:
        lines.append(f"  BAD {err.source}: {err.reason}")
    return "\n".join(lines)
