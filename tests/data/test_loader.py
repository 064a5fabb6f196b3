"""The index and the per-draw pipeline: cached index reuse and invalidation, header lengths that match
decoded ones, the same draws with any number of workers, a row that decodes longer than indexed,
and a dying worker named by its row."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from mmtune.collators import collate_packed
from mmtune.config import AugmentConfig, ConfigError, DataConfig, load_config
from mmtune.data.dataset import MultimodalDataset
from mmtune.data.encode import MediaSpec
from mmtune.data.loader import BatchKey, Draws, PlanSampler, draw_batches, encode_all, worker_error
from mmtune.data.stream import batch_budget
from mmtune.errors import DataError
from mmtune.model.tokenizer import load_tokenizer
from tests.tiny import write_asr_run

AUGMENT = AugmentConfig(spec_augment=True, time_mask=5, speed=[0.9, 1.0, 1.1], noise_snr_db=[10.0, 30.0],
                        noise_p=0.5, reverb_p=0.5, band_limit_p=0.5, band_limit_rates=[8000, 11025])


def dataset_of(folder, tokenizer_dir, train=False, **data):
    config = folder / "config.yaml"
    cfg = load_config(config if config.exists() else write_asr_run(folder, tokenizer_dir))
    data = DataConfig(**{"num_workers": 0, **data})
    return MultimodalDataset.load(str(folder / "train.jsonl"), load_tokenizer(tokenizer_dir),
                                  MediaSpec.from_config(cfg.model, data), data, train=train, seed=3, progress=False)


def test_the_index_is_cached_and_rebuilt_when_the_data_or_a_length_setting_changes(tmp_path, tokenizer_dir):
    first = dataset_of(tmp_path, tokenizer_dir)
    assert not first.index.cached and first.index.source_rows == 16
    again = dataset_of(tmp_path, tokenizer_dir)
    assert again.index.cached and again.lengths.tolist() == first.lengths.tolist()
    assert not dataset_of(tmp_path, tokenizer_dir, system="Be brief.").index.cached  # a setting that changes lengths
    with open(tmp_path / "train.jsonl", "a") as f:  # the data changed: size and mtime
        f.write(json.dumps({"audio": "audio/0.wav", "text": "zero"}) + "\n")
    grown = dataset_of(tmp_path, tokenizer_dir)
    assert not grown.index.cached and len(grown) == 17


def test_indexed_lengths_are_the_decoded_ones_and_bound_every_speed_draw(tmp_path, tokenizer_dir):
    plain = dataset_of(tmp_path, tokenizer_dir)
    examples, _ = encode_all(plain)
    assert plain.lengths.tolist() == [len(e) for e in examples]  # headers alone give the exact lengths
    augmented = dataset_of(tmp_path, tokenizer_dir, train=True, augment=AUGMENT)
    draws = [len(augmented.example(k, epoch)) for epoch in range(6) for k in range(len(augmented))]
    bound = np.tile(augmented.lengths, 6)
    assert (np.array(draws) <= bound).all() and (np.array(draws) == bound).any()  # 0.9x is the longest draw
    assert (augmented.lengths >= plain.lengths).all() and (augmented.lengths > plain.lengths).any()


def test_the_index_built_in_worker_processes_equals_the_one_built_inline(tmp_path, tokenizer_dir):
    write_asr_run(tmp_path, tokenizer_dir)
    rows = (tmp_path / "train.jsonl").read_text().splitlines() * 70  # 1120 rows: three chunks of 512
    (tmp_path / "big.jsonl").write_text("\n".join(rows) + "\n")
    cfg = load_config(tmp_path / "config.yaml")
    tokenizer = load_tokenizer(tokenizer_dir)
    indexes = []
    for workers in (0, 2):
        data = DataConfig(num_workers=workers)
        ds = MultimodalDataset.load(str(tmp_path / "big.jsonl"), tokenizer, MediaSpec.from_config(cfg.model, data),
                                    data, progress=False)
        indexes.append(ds.index)
        for cache in (tmp_path / ".mmtune_index" / "big.jsonl").glob("*.npz"):
            cache.unlink()  # the next build starts from nothing
    assert len(indexes[0].rows) == 1120
    for column in ("rows", "tokens", "supervised", "audio", "audio_seconds"):
        assert np.array_equal(getattr(indexes[0], column), getattr(indexes[1], column)), column


def _drawn_batches(dataset, data, batches: int):
    sampler = PlanSampler(dataset.lengths, data, seed=5)
    draws = Draws(dataset, collate_packed, 0, batch_budget(dataset.lengths, data), padded=False,
                  workers=data.num_workers)
    out = []
    for item in draw_batches(draws, sampler, data):
        out.append(item)
        if len(out) == batches:
            return out


def test_draws_are_the_same_with_any_number_of_workers(tmp_path, tokenizer_dir):
    results = []
    for workers in (0, 2):
        dataset = dataset_of(tmp_path / f"w{workers}", tokenizer_dir, train=True, num_workers=workers,
                             batching="packed", max_tokens_per_batch=120, augment=AUGMENT)
        results.append(_drawn_batches(dataset, dataset.encoder.data, batches=12))  # more than one epoch
    for a, b in zip(*results):
        assert a["rows"] == b["rows"] and a["after"] == b["after"]
        assert torch.equal(a["batch"]["input_ids"], b["batch"]["input_ids"])
        assert torch.equal(a["batch"]["audio_features"], b["batch"]["audio_features"])  # speed, noise, masks
    assert results[0][-1]["after"]["epoch"] >= 1


def test_a_row_longer_than_indexed_is_counted_and_never_breaks_the_budget(tmp_path, tokenizer_dir):
    dataset = dataset_of(tmp_path, tokenizer_dir)
    stat = os.stat(tmp_path / "train.jsonl")
    # the clip of row 0 is replaced after indexing by a 2 s one (the manifest is untouched: the index stays)
    sf.write(tmp_path / "audio" / "0.wav", np.zeros(32000, np.float32) + 0.1, 16000)
    os.utime(tmp_path / "train.jsonl", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    dataset = dataset_of(tmp_path, tokenizer_dir)
    assert dataset.index.cached
    budget = int(dataset.lengths[0] + dataset.lengths[1])
    draws = Draws(dataset, collate_packed, 0, budget, padded=False)
    (item,) = draw_batches(draws, [BatchKey(0, (0, 1))], dataset.encoder.data)
    assert item["longer"] == [dataset.label(0)] and item["dropped"] == [dataset.label(0)]
    assert item["batch"]["input_ids"].shape[1] == dataset.lengths[1] <= budget
    (item,) = draw_batches(Draws(dataset, collate_packed, 0, None, padded=False), [BatchKey(0, (0, 1))],
                           dataset.encoder.data)
    assert item["longer"] == [dataset.label(0)] and item["dropped"] == []  # no budget: kept, counted


class DiesOnRow(MultimodalDataset):
    def example(self, k, epoch=0):
        if k == 5:
            os._exit(3)  # a crash in native code, as a broken decoder library would
        return super().example(k, epoch)


def test_a_worker_that_dies_is_an_error_naming_its_row(tmp_path, tokenizer_dir):
    good = dataset_of(tmp_path, tokenizer_dir)
    dataset = DiesOnRow(good.source, good.index, good.encoder)
    data = DataConfig(num_workers=2)
    keys = [BatchKey(0, (k,)) for k in range(len(dataset))]

    def run():
        draws = Draws(dataset, collate_packed, 0, workers=2)
        try:  # as the training loop does: torch may raise the worker's death anywhere in this thread
            list(draw_batches(draws, keys, data))
        except (RuntimeError, EOFError) as e:
            raise worker_error(draws, e) from None

    for attempt in range(3):  # torch's SIGCHLD RuntimeError can also land after the DataError: then try again
        try:
            with pytest.raises(DataError) as info:
                run()
            break
        except RuntimeError:
            continue
    assert info.value.source == f"{tmp_path / 'train.jsonl'}:6" and "died while encoding this row" in info.value.reason


def test_tar_shards_are_planned_a_window_of_shards_at_a_time(tmp_path, tokenizer_dir):
    from mmtune.data.stream import plan_epoch
    from tests.data.test_sources import write_shards

    cfg = write_asr_run(tmp_path, tokenizer_dir)
    path = write_shards(tmp_path, per_shard=2)  # 8 shards of 2 clips
    data = DataConfig(num_workers=0, shard_window=3, batch_size=2, batching="padded")
    dataset = MultimodalDataset.load(path, load_tokenizer(tokenizer_dir),
                                     MediaSpec.from_config(load_config(cfg).model, data), data, progress=False)
    shards = dataset.shards
    assert shards.tolist() == [k // 2 for k in range(16)]
    for seed in range(3):
        batches = plan_epoch(dataset.lengths, data, seed, shards)
        assert sorted(k for b in batches for k in b) == list(range(16))  # every sample once
        visit = []  # shards in the order the plan first touches them
        for k in (k for b in batches for k in b):
            if int(shards[k]) not in visit:
                visit.append(int(shards[k]))
        window = {shard: position // 3 for position, shard in enumerate(visit)}
        per_batch = [{window[int(shards[k])] for k in b} for b in batches]
        assert all(len(w) == 1 for w in per_batch)  # a batch never mixes two windows
        order = [w.pop() for w in per_batch]
        assert order == sorted(order) and sorted(visit) == list(range(8))  # window after window, all shards
    assert plan_epoch(dataset.lengths, data, 0, shards) != plan_epoch(dataset.lengths, data, 1, shards)


def test_the_stream_gives_each_epoch_plan_in_order_and_resumes_mid_epoch():
    from mmtune.data.stream import BatchStream, plan_epoch

    lengths = np.random.default_rng(0).integers(5, 60, 101)
    data = DataConfig(batching="packed", max_tokens_per_batch=150)
    stream = BatchStream(lengths, data, seed=4)
    n0 = stream.batches_per_epoch
    drawn = [stream.next() for _ in range(n0 + 3)]
    assert drawn[:n0] == plan_epoch(lengths, data, 4) and drawn[n0:] == plan_epoch(lengths, data, 5)[:3]
    resumed = BatchStream(lengths, data, seed=4, start={"epoch": 0, "index": n0 - 2})
    assert [resumed.next() for _ in range(5)] == drawn[n0 - 2: n0 + 3]
    assert resumed.state_dict() == stream.state_dict() == {"epoch": 1, "index": 3}


def test_a_json_list_restored_to_an_earlier_version_reads_that_version(tmp_path, tokenizer_dir):
    cfg = load_config(write_asr_run(tmp_path, tokenizer_dir))
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    llava = [{"conversations": [{"from": "human", "value": "Transcribe."}, {"from": "gpt", "value": r["text"]}]}
             for r in rows]
    path = tmp_path / "train.json"
    data = DataConfig(num_workers=0)
    spec = MediaSpec.from_config(cfg.model, data)
    tokenizer = load_tokenizer(tokenizer_dir)

    def answers():
        ds = MultimodalDataset.load(str(path), tokenizer, spec, data, progress=False)
        return [ds.sample(k).messages[-1]["content"][0]["text"] for k in range(len(ds))], ds.index.cached

    path.write_text(json.dumps(llava[:6]))
    stamp = os.stat(path).st_mtime_ns
    first, _ = answers()
    path.write_text(json.dumps(llava[6:]))  # another version of the file
    assert answers()[0] == [r["text"] for r in rows[6:]]
    path.write_text(json.dumps(llava[:6]))
    os.utime(path, ns=(stamp, stamp))  # restored with its old mtime (cp -p, rsync -a): the old index matches
    again, cached = answers()
    assert cached and again == first == [r["text"] for r in rows[:6]]


def _dies_on_chunk_two(job, chunk):
    if chunk == 2:
        os._exit(3)
    return chunk, 1


def test_an_index_worker_that_dies_is_an_error_not_a_hang():
    from types import SimpleNamespace

    from tqdm import tqdm

    from mmtune.data.index import map_chunks

    job = (SimpleNamespace(path="data/train.jsonl"),)
    assert [r[0] for r in map_chunks(_dies_on_chunk_two, job, [0, 1, 3], 2, tqdm(disable=True))] == [0, 1, 3]
    with pytest.raises(DataError, match=r"data/train.jsonl: a worker process died after \d rows"):
        map_chunks(_dies_on_chunk_two, job, [0, 1, 2, 3], 2, tqdm(disable=True))


def test_room_and_channel_augmentation_change_the_training_features_as_configured(tmp_path, tokenizer_dir):
    clean = dataset_of(tmp_path, tokenizer_dir, train=True)
    plain = clean.example(0, 0).audio[0]  # (n_mels, frames)
    # a probability of 0 draws nothing: SpecAugment's masks (later in the stream) are those without noise
    masked = dataset_of(tmp_path, tokenizer_dir, train=True, augment=AugmentConfig(spec_augment=True))
    off = dataset_of(tmp_path, tokenizer_dir, train=True,
                     augment=AugmentConfig(spec_augment=True, noise_snr_db=[5.0, 10.0], noise_p=0.0))
    assert torch.equal(masked.example(0, 0).audio[0], off.example(0, 0).audio[0])
    # telephone: mel bins above 4 kHz (bins 57+ of 80 on Whisper's scale) lose their energy
    phone = dataset_of(tmp_path, tokenizer_dir, train=True,
                       augment=AugmentConfig(band_limit_p=1.0, band_limit_rates=[8000]))
    limited = phone.example(0, 0).audio[0]
    assert limited.shape == plain.shape
    assert (plain[60:] - limited[60:]).mean() > 0.1 and (plain[:40] - limited[:40]).abs().mean() < 0.1
    room = dataset_of(tmp_path, tokenizer_dir, train=True, augment=AugmentConfig(reverb_p=1.0, reverb_rt60=[0.5, 0.5]))
    a, b = room.example(0, 0).audio[0], room.example(0, 1).audio[0]
    assert a.shape == plain.shape and not torch.equal(a, plain)
    assert not torch.equal(a, b) and torch.equal(a, room.example(0, 0).audio[0])  # drawn per (epoch, row), seeded
    # another talker and another microphone act on the features, drawn per (epoch, row) too
    talker = dataset_of(tmp_path, tokenizer_dir, train=True, augment=AugmentConfig(vtlp=[0.8, 0.8], channel_eq_db=6.0))
    c, d = talker.example(0, 0).audio[0], talker.example(0, 1).audio[0]
    assert c.shape == plain.shape and not torch.equal(c, plain)
    assert not torch.equal(c, d) and torch.equal(c, talker.example(0, 0).audio[0])
    # a microphone 6 dB louder: the features move by 6 / 40 where the clip is above its floor
    louder = dataset_of(tmp_path, tokenizer_dir, train=True, augment=AugmentConfig(gain_db=[6, 6])).example(0, 0).audio[0]
    above = plain > plain.max() - 1.5
    assert torch.allclose((louder - plain)[above], torch.full_like(plain[above], 6 / 40), atol=1e-3)


@pytest.mark.parametrize("augment, message", [
    ({"reverb_p": 1.5}, "reverb_p: 1.5 is not a probability"),
    ({"noise_snr_db": [30, 10]}, "noise_snr_db: .* is not a range"),
    ({"reverb_rt60": [0.0, 0.5]}, "reverb_rt60: .* > 0 s"),
    ({"band_limit_rates": [16000]}, "band_limit_rates: .* rates in \\(0, 16000\\) Hz"),
    ({"gain_db": [10, -10]}, "gain_db: .* is not a range"),
    ({"vtlp": [1.2, 0.8]}, "vtlp: .* a range \\[lo, hi\\] of warp factors"),
    ({"vtlp_p": -0.1}, "vtlp_p: -0.1 is not a probability"),
    ({"channel_eq_db": 60}, "channel_eq_db: 60.0: give the largest gain in dB"),
])
def test_bad_augmentation_settings_are_config_errors_naming_the_key(tmp_path, tokenizer_dir, augment, message):
    config = write_asr_run(tmp_path, tokenizer_dir)
    overrides = [f"data.augment.{k}={json.dumps(v)}" for k, v in augment.items()]
    with pytest.raises(ConfigError, match="data.augment." + message):
        load_config(config, overrides)
