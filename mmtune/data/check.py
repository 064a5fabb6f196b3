"""`mmtune data check`: read every row of a manifest and its media, and say what is wrong where.

    report = check_manifest("data/train.jsonl", encoder=None)   # encoder: token lengths too
    print(format_report(report)); exit(1 if report.bad else 0)
"""

from dataclasses import dataclass, field

from tqdm.auto import tqdm

from mmtune.audio.io import SAMPLE_RATE, load_audio
from mmtune.data.dataset import SampleEncoder
from mmtune.data.formats import read_manifest
from mmtune.errors import DataError, MediaError
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


def check_manifest(path: str, encoder: SampleEncoder | None = None, instruction: str = "Transcribe the audio.",
                   progress: bool = True) -> CheckReport:
    """Decode every row's media (and encode it when `encoder` is given), collecting every problem."""
    system = None
    if encoder is not None:  # read rows as training does, so token lengths are the ones training sees
        instruction, system = encoder.data.instruction, encoder.data.system
    samples, bad = read_manifest(path, instruction, system, on_bad="skip")
    report = CheckReport(path, rows=len(samples) + len(bad), bad=list(bad))
    for sample in tqdm(samples, desc=f"checking {path}", unit="row", disable=not progress, leave=False):
        try:
            _check_media(sample, report)
            if encoder is not None:
                report.token_lengths.append(len(encoder(sample)))
                if sample.source in encoder.truncated:
                    report.over_length.append(sample.source)
                    report.truncated.append(sample.source)
            report.good += 1
        except MediaError as e:
            report.bad.append(DataError(sample.source, str(e)))
        except DataError as e:
            report.bad.append(DataError(sample.source, e.reason))
            if e.reason.startswith("over-length"):
                report.over_length.append(sample.source)
    report.bad.sort(key=_line_of)
    return report


def _check_media(sample, report: CheckReport) -> None:
    for part in (p for m in sample.messages for p in m["content"]):
        if part["type"] == "audio":
            report.audio_seconds.append(len(load_audio(part["path"])) / SAMPLE_RATE)
            report.audio_clips += 1
        elif part["type"] == "image":
            report.image_sizes.append(load_image(part["path"]).size)
            report.images += 1


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
