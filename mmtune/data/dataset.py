"""A dataset of one data source: rows read and encoded when drawn, lengths from the cached index.

    spec = MediaSpec.from_config(cfg.model, cfg.data)
    dataset = MultimodalDataset.load(cfg.data.train, tokenizer, spec, cfg.data, train=True, seed=0)
    dataset.lengths[k]           # tokens of sample k (the index: no media decoded)
    dataset.example(k, epoch=0)  # sample k decoded, augmented (a draw of (seed, epoch, k)), tokenized

Nothing per sample is kept but the index's numbers: memory and start-up do not grow with decoded
media, and a second run reads the index back. Bad rows found by the index raise a DataError naming
the row, or with `on_bad_sample: skip` are counted and reported.
"""

import re
from collections import Counter

import numpy as np

from mmtune.config import DataConfig
from mmtune.data.encode import MediaSpec, SampleEncoder
from mmtune.data.example import Example
from mmtune.data.formats import Sample
from mmtune.data.index import LengthIndex, load_index
from mmtune.data.sources import read_sample
from mmtune.errors import DataError


class MultimodalDataset:
    """Samples of one source, in row order, that the index found usable."""

    def __init__(self, source, index: LengthIndex, encoder: SampleEncoder):
        self.source, self.index, self.encoder = source, index, encoder
        self.lengths = index.tokens  # (N,) int32: a few bytes per row, not a Python int each
        self.skipped: list[DataError] = list(index.skipped)

    @classmethod
    def load(cls, path: str, tokenizer, spec: MediaSpec, data: DataConfig, train: bool = False, seed: int = 0,
             progress: bool = True) -> "MultimodalDataset":
        encoder = SampleEncoder(tokenizer, spec, data, train=train, seed=seed)
        index, source = load_index(path, encoder, data, data.num_workers, progress)
        if index.skipped and data.on_bad_sample == "error":
            raise index.skipped[0]
        if len(index.rows) == 0:
            raise DataError(path, f"no usable sample ({len(index.skipped)} skipped); run `mmtune data check`")
        return cls(source, index, encoder)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def shards(self):
        """(N,) shard number of each sample for tar shards (the plan then reads a window of shards at a
        time), else None."""
        return self.source.shard_numbers(self.index.rows)

    def label(self, k: int) -> str:
        """"file:LINE" (or the source's own form) of sample k."""
        return self.source.label(int(self.index.rows[k]))

    def sample(self, k: int) -> Sample:
        return read_sample(self.source, int(self.index.rows[k]), self.encoder.data.instruction,
                           self.encoder.data.system)

    def fields(self, k: int, names) -> dict:
        """Row columns `names` of sample k as text, those the row has: fields(0, ["voice"]) -> {"voice": "en-029"}."""
        _, row = self.source.row(int(self.index.rows[k]))
        return {n: str(row[n]) for n in names if isinstance(row, dict) and row.get(n) is not None}

    def example(self, k: int, epoch: int = 0) -> Example:
        return self.encoder(self.sample(k), epoch, k)

    def prompt(self, k: int) -> Example:
        return self.encoder.prompt(self.sample(k))

    def stats(self, drawn_skipped: dict | None = None) -> dict:
        """Rows kept, skipped (by kind of reason) and truncated, supervised token fraction, modality counts.
        drawn_skipped: {sample: (source, reason)} of rows that failed when decoded (`DrawLog.skipped`):
        counted as skipped, and their sizes left out."""
        drawn_skipped = drawn_skipped or {}
        keep = np.ones(len(self), dtype=bool)
        keep[list(drawn_skipped)] = False
        ix = self.index
        tokens = int(ix.tokens[keep].sum())
        reasons = Counter(reason_kind(e.reason) for e in self.skipped)
        reasons.update(reason_kind(reason) for _, reason in drawn_skipped.values())
        return {"rows": int(keep.sum()), "skipped": len(self.skipped) + len(drawn_skipped),
                "skipped_by_reason": dict(reasons), "truncated": int(ix.truncated[keep].sum()), "tokens": tokens,
                "supervised_fraction": int(ix.supervised[keep].sum()) / max(tokens, 1),
                "audio_clips": int(ix.audio[keep].sum()), "images": int(ix.images[keep].sum()),
                "audio_hours": float(ix.audio_seconds[keep].sum()) / 3600}


def reason_kind(reason: str) -> str:
    """A skip reason without what is particular to its row: the text before the first ':', ';' or '(',
    file paths as <file> and numbers as N (not those in names such as UTF-8).
        reason_kind("cannot decode audio /data/a.flac: Error opening ...")  # "cannot decode audio <file>"
    """
    head = re.split(r"[:;(]", reason, maxsplit=1)[0]
    head = re.sub(r"\S*[/\\]\S*", "<file>", head)
    return re.sub(r"(?<![\w-])\d+", "N", head).strip()
