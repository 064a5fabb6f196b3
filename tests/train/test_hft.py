"""Half Fine-Tuning (`train: hft`): the paper's category-level halves in every layer, exactly that half
trains in a round (the rest keeps its weights and its Adam moments bit for bit), the halves change
between rounds, and a resumed run is in the same round with the same halves."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from mmtune.config import ConfigError, load_config
from mmtune.model.checkpoint import start_model
from mmtune.train.hft import HalfFineTuning, categories
from mmtune.train.loop import train
from mmtune.train.optim import build_optimizer
from tests.train.test_mixed_processes import _losses
from tests.tiny import write_asr_run

RUN = ["model.llm.train=hft", "model.audio.train=hft", "model.hft.rounds=2", "max_steps=4", "train.save_every=2",
       "eval.metrics=[loss]", "data.batch_size=2", "train.weight_decay=0.1"]


def halves(cfg, round_index: int) -> tuple[set[str], set[str]]:
    """(training, frozen) parameter names of a round, drawn on a freshly built model of the config."""
    model, _ = start_model(cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    hft = HalfFineTuning.of(model, {"llm": "hft", "audio_encoder": "hft"}, cfg.model.hft.rounds, cfg.model.hft.seed,
                            cfg.train.max_steps)
    training, frozen = hft.choose(round_index)
    return {names[id(p)] for p in training}, {names[id(p)] for p in frozen}


def test_each_layer_trains_half_of_each_category(tmp_path, tokenizer_dir):
    cfg = load_config(write_asr_run(tmp_path, tokenizer_dir), RUN)
    model, _ = start_model(cfg.model)
    hft = HalfFineTuning.of(model, {"llm": "hft", "audio_encoder": "hft"}, 2, 0, 4)
    training, _ = hft.choose(0)
    chosen = {id(p) for p in training}
    for part in ("llm", "audio_encoder"):
        ffn_counts = []
        for layer in hft.parts[part]:
            cats = categories(layer)
            trained = {key: sum(id(unit[0]) in chosen for unit in units) for key, units in cats.items()}
            attention = [key for key in cats if key.startswith("attn:")]
            assert attention and all(len(cats[k]) == 4 and trained[k] == 2 for k in attention)  # q, k, v, o
            assert len(cats["norm"]) == 2 and trained["norm"] == 1
            ffn_counts.append((len(cats["ffn"]), trained["ffn"]))
        if part == "llm":  # gate, up, down: one of the two layers trains 2, the other 1 (the paper's rule)
            assert sorted(ffn_counts) == [(3, 1), (3, 2)]
        else:  # fc1, fc2
            assert ffn_counts == [(2, 1), (2, 1)]
    # a unit trains whole (weight and bias together); the same round draws the same half, the next another
    ids = [id(p) for p in training]
    assert [id(p) for p in hft.choose(0)[0]] == ids and [id(p) for p in hft.choose(1)[0]] != ids


def test_exactly_the_chosen_half_trains_and_resume_keeps_the_round(tmp_path, tokenizer_dir):
    path = write_asr_run(tmp_path, tokenizer_dir)
    cfg = load_config(path, RUN + [f"output_dir={tmp_path / 'run'}"])
    train(cfg)
    start, _ = start_model(cfg.model)
    weights = [{k: v.detach().clone() for k, v in start.state_dict().items()}]
    weights += [load_file(str(tmp_path / f"run/checkpoint-{s}/model.safetensors")) for s in (2, 4)]
    for r in (0, 1):  # round r is steps 2r+1, 2r+2: its frozen half ends it as it began, its training half moved
        training, frozen = halves(cfg, r)
        before, after = weights[r], weights[r + 1]
        assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)  # weight decay did not touch them
        assert all(not torch.equal(before[n], after[n]) for n in training if n.endswith("weight"))
    assert halves(cfg, 0)[1] != halves(cfg, 1)[1]
    # the frozen half's Adam moments are kept as they were (its parameters had no gradient)
    model, _ = start_model(cfg.model)
    order = {id(p): n for n, p in model.named_parameters()}
    names = [order[id(p)] for g in build_optimizer(model, cfg.train, cfg.model).param_groups for p in g["params"]]
    moments = [load_file(str(tmp_path / f"run/checkpoint-{s}/optimizer.safetensors")) for s in (2, 4)]
    frozen_late = halves(cfg, 1)[1]
    kept = [i for i, n in enumerate(names) if n in frozen_late and f"{i}.exp_avg" in moments[0]]  # trained in round 1
    assert kept and all(torch.equal(moments[0][f"{i}.{m}"], moments[1][f"{i}.{m}"]) for i in kept
                        for m in ("exp_avg", "exp_avg_sq"))
    never = [i for i, n in enumerate(names) if n in frozen_late and f"{i}.exp_avg" not in moments[0]]
    assert all(f"{i}.exp_avg" not in moments[1] for i in never)  # frozen in both rounds: never stepped
    # resume from checkpoint-2 (the end of round 1): round 2's halves and losses, exactly
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed, ignore=shutil.ignore_patterns("checkpoint-4", "final"))
    train(load_config(path, RUN + [f"output_dir={resumed}", "train.resume=auto"]))
    assert _losses(resumed) == {s: v for s, v in _losses(tmp_path / "run").items()}
    a, b = load_file(str(tmp_path / "run/final/model.safetensors")), load_file(str(resumed / "final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hft_options_are_checked(tmp_path, tokenizer_dir):
    with pytest.raises(ConfigError, match="rounds"):
        load_config(write_asr_run(tmp_path, tokenizer_dir), ["model.llm.train=hft", "model.hft.rounds=0"])
