import copy
import json

import pytest
import torch

from mmtune.bench import packing
from mmtune.bench.report import best_time, peak_flops, write_json
from mmtune.data.example import IGNORE_INDEX

KEYS = {"padded_tokens_per_s", "packed_tokens_per_s", "speedup", "loss_abs_diff", "padded_real_token_fraction",
        "packed_real_token_fraction", "grouped_tokens_per_s", "speedup_vs_grouped", "logits_rel_err",
        "alone_logits_rel_err"}


@pytest.fixture(scope="module")
def result():
    return packing.run(steps=2, num_samples=24, eval_samples=8, batch_size=4, max_tokens=1024)


def test_tiny_run_returns_every_key_with_sane_values(result):
    assert KEYS <= set(result)
    json.dumps(result)  # JSON-able as the CLI writes it
    assert result["loss_abs_diff"] <= 1e-4  # same samples, same summed loss over the same tokens
    assert result["logits_rel_err"] < 1e-5  # fp32: the varlen path is the padded computation
    assert result["alone_logits_rel_err"] < 1e-5
    assert result["padded_tokens_per_s"] > 0 and result["packed_tokens_per_s"] > 0 and result["speedup"] > 0
    assert 0 < result["padded_real_token_fraction"] < result["packed_real_token_fraction"] <= 1
    assert result["steps"] == {"padded": 2, "grouped": 2, "packed": 2}
    assert sum(result["samples"].values()) == 24 and result["eval_tokens"] > 0
    assert all(torch.isfinite(torch.tensor(v)) for v in result["final_train_loss"].values())


def test_samples_have_exact_placeholder_runs_and_answer_only_labels():
    p = packing.PRESETS["tiny"]
    models, _ = packing.build_models(p, "cpu", seed=0)
    model = models["packed"]
    examples = packing.make_examples(40, model, p, seed=0)
    assert {e.source.rsplit(":", 1)[1] for e in examples} == {"audio", "image", "text"}
    for e in examples:
        n_audio = int((e.input_ids == model.token_ids["audio"]).sum())
        n_image = int((e.input_ids == model.token_ids["image"]).sum())
        assert n_audio == sum(packing.num_audio_tokens(c.shape[1], p["stack"]) for c in e.audio)
        assert n_image == len(e.images) * packing.num_image_tokens(96, 8)
        supervised = (e.labels != IGNORE_INDEX).nonzero().flatten()
        assert supervised.numel() > 0 and int(supervised[-1]) == len(e) - 1  # the answer ends the sample
        assert torch.equal(e.labels[supervised], e.input_ids[supervised])
        assert not ((e.labels != IGNORE_INDEX) & (e.input_ids == model.token_ids["audio"])).any()
    for e in examples:
        for clip in e.audio:
            assert 100 <= clip.shape[1] <= 2000  # 1-20 s of 10 ms frames


def test_shuffled_batches_cover_every_sample_once():
    batches = packing.shuffled_batches(10, 4, seed=3)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(i for b in batches for i in b) == list(range(10))


def test_flop_count_leaves_out_looked_up_tables():
    emb = torch.nn.Embedding(10, 4)
    assert packing._matmul_params(torch.nn.Sequential(emb, torch.nn.Linear(4, 3))) == 4 * 3 + 3


def test_peak_flops_override_and_cpu(tmp_path):
    assert peak_flops("cpu") is None
    assert peak_flops("cpu", peak_tflops=100) == 100e12
    seconds, value = best_time(lambda: 7, repeats=2, device="cpu")
    assert value == 7 and seconds >= 0
    text = write_json({"speedup": 2.0}, tmp_path / "out" / "r.json")
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == json.loads(text) == {"speedup": 2.0}


def test_bf16_varlen_logits_differ_from_padded_no_more_than_batch_shape_does():
    """In bf16 any change of batch shape changes matmul rounding; the packed path must add no more."""
    p = copy.deepcopy(packing.PRESETS["tiny"]) | {"dtype": "bfloat16"}
    models, tokenizer = packing.build_models(p, "cpu", seed=0)
    examples = packing.make_examples(16, models["packed"], p, seed=0)
    check = packing.compare_eval(models["padded"], models["packed"], examples, 4, tokenizer.pad_token_id, "cpu")
    assert 0 < check["alone_logits_rel_err"] < 1e-2  # bf16 rounding, measured 3.7e-3
    assert check["logits_rel_err"] <= 2 * check["alone_logits_rel_err"]  # measured 2.0e-3
    assert abs(check["padded_loss"] - check["packed_loss"]) < 1e-3
