"""Data kept as users keep it: a Parquet file and a save_to_disk folder written by `datasets` (Audio
column), WebDataset tar shards (KEY.flac + KEY.json) written by `webdataset`. Each gives the same
examples as the JSONL manifest of the same clips, trains with `mmtune train` and passes `mmtune data check`."""

import json

import datasets
import pytest
import torch
import webdataset

from mmtune.cli import main
from mmtune.config import DataConfig, load_config
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import MediaSpec
from mmtune.data.loader import encode_all
from mmtune.model.tokenizer import load_tokenizer
from tests.tiny import write_asr_run


def asr_rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]


def write_parquet(folder) -> str:
    rows = asr_rows(folder)
    ds = datasets.Dataset.from_dict({"audio": [str(folder / r["audio"]) for r in rows],
                                     "sentence": [r["text"] for r in rows]}).cast_column("audio", datasets.Audio())
    ds.to_parquet(str(folder / "train.parquet"))
    return str(folder / "train.parquet")


def write_saved(folder) -> str:
    rows = asr_rows(folder)
    ds = datasets.Dataset.from_dict({"audio": [str(folder / r["audio"]) for r in rows],
                                     "sentence": [r["text"] for r in rows]}).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(folder / "saved"))  # the clips' bytes are stored inside the Arrow files
    return str(folder / "saved")


def write_shards(folder, per_shard: int = 6) -> str:
    rows = asr_rows(folder)
    (folder / "shards").mkdir()
    for s in range(0, len(rows), per_shard):
        with webdataset.TarWriter(str(folder / "shards" / f"train-{s // per_shard:03d}.tar")) as sink:
            for k, row in enumerate(rows[s: s + per_shard], start=s):
                sink.write({"__key__": f"clip{k:04d}", "flac": _flac_bytes(folder / row["audio"]),
                            "json": json.dumps({"text": row["text"]}).encode()})
    return str(folder / "shards")


def _flac_bytes(wav_path) -> bytes:
    import io

    import soundfile as sf

    wave, rate = sf.read(str(wav_path), dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="FLAC")
    return buffer.getvalue()


WRITERS = {"parquet": (write_parquet, {"text": "sentence"}), "save_to_disk": (write_saved, {"text": "sentence"}),
           "tar shards": (write_shards, None)}


def load(path, tokenizer_dir, cfg_path, columns=None):
    cfg = load_config(cfg_path)
    data = DataConfig(num_workers=0, columns=columns)
    return MultimodalDataset.load(path, load_tokenizer(tokenizer_dir), MediaSpec.from_config(cfg.model, data), data,
                                  progress=False)


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_source_gives_the_examples_of_the_same_jsonl(tmp_path, tokenizer_dir, kind):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    writer, columns = WRITERS[kind]
    path = writer(tmp_path)
    expected, _ = encode_all(load(str(tmp_path / "train.jsonl"), tokenizer_dir, cfg))
    dataset = load(path, tokenizer_dir, cfg, columns)
    got, _ = encode_all(dataset)
    assert len(got) == len(expected) == 16
    assert dataset.lengths.tolist() == [len(e) for e in expected]
    for a, b in zip(got, expected):
        assert a.input_ids.tolist() == b.input_ids.tolist() and a.labels.tolist() == b.labels.tolist()
        assert torch.allclose(a.audio[0], b.audio[0], atol=1e-4)  # FLAC in the shards is 16-bit
    assert load(path, tokenizer_dir, cfg, columns).index.cached  # the second open reads the index back


@pytest.mark.parametrize("kind", ["parquet", "tar shards"])
def test_a_source_trains_with_the_cli_and_passes_data_check(tmp_path, tokenizer_dir, kind, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    writer, columns = WRITERS[kind]
    path = writer(tmp_path)
    overrides = [f"data.train={path}", "max_steps=2", "data.num_workers=2"]
    overrides += [f"data.columns={json.dumps(columns)}"] if columns else []
    assert main(["data", "check", path, "--config", cfg, *overrides[:1], *overrides[3:]]) == 0  # the same index
    assert f"{path}: 16 rows, 16 good, 0 bad" in capsys.readouterr().out
    assert main(["train", cfg, *overrides]) == 0
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert metrics["num_samples"] == 4 and metrics["loss"] > 0


def test_an_unknown_column_is_named_with_the_columns_the_dataset_has(tmp_path, tokenizer_dir):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    path = write_parquet(tmp_path)
    with pytest.raises(Exception, match=r"data.columns names \['transcript'\].*\['audio', 'sentence'\]"):
        load(path, tokenizer_dir, cfg, {"text": "transcript"})


def test_a_dataset_converts_to_a_manifest_with_its_clips_as_files(tmp_path, tokenizer_dir, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    saved = write_saved(tmp_path)
    out = tmp_path / "converted" / "train.jsonl"
    assert main(["data", "convert", "--dataset", saved, "--column", "text=sentence", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 16 rows written from {saved}, 0 skipped")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == [r["text"] for r in asr_rows(tmp_path)]
    assert all((out.parent / r["audio"]).is_file() and r["audio"].startswith("media/") for r in rows)
    got, _ = encode_all(load(str(out), tokenizer_dir, cfg))
    expected, _ = encode_all(load(str(tmp_path / "train.jsonl"), tokenizer_dir, cfg))
    assert all(torch.equal(a.audio[0], b.audio[0]) and torch.equal(a.input_ids, b.input_ids)
               for a, b in zip(got, expected))
