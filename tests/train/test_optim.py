"""Per-part learning rates and weight decay, LoRA+, DoRA and rsLoRA: what the optimizer and the layers hold."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmtune.cli import main
from mmtune.config import LoraConfig, TrainConfig
from mmtune.model.build import build_model
from mmtune.model.export import export_checkpoint
from mmtune.train.optim import build_optimizer, build_scheduler
from tests.model.test_checkpoint import trained_checkpoint
from tests.model.test_export import llm_logits, text_ids
from tests.tiny import tiny_model_config, write_asr_run


def _groups(optimizer) -> dict[str, list[tuple[float, float, int]]]:
    """{group name: [(lr, weight_decay, parameters)]}."""
    out: dict = {}
    for g in optimizer.param_groups:
        out.setdefault(g["name"], []).append((g["lr"], g["weight_decay"], len(g["params"])))
    return out


def test_each_part_learns_at_its_own_rate_and_decay(tokenizer_dir):
    cfg = tiny_model_config(tokenizer_dir, llm_train="full", tower_train="full")
    cfg.llm.lr, cfg.audio.lr, cfg.audio.projector.lr, cfg.vision.projector.weight_decay = 1e-5, 2e-5, 3e-4, 0.5
    model, _ = build_model(cfg)
    train = TrainConfig(lr=1e-4, weight_decay=0.1)
    optimizer = build_optimizer(model, train, cfg)
    groups = _groups(optimizer)
    assert optimizer.param_groups[0]["name"] == "llm"  # the logged lr is the LLM's
    rates = {name: sorted({(lr, wd) for lr, wd, _ in g}) for name, g in groups.items()}
    assert rates == {"llm": [(1e-5, 0.0), (1e-5, 0.1)], "audio_encoder": [(2e-5, 0.0), (2e-5, 0.1)],
                     "audio_projector": [(3e-4, 0.0), (3e-4, 0.1)], "vision_tower": [(1e-4, 0.0), (1e-4, 0.1)],
                     "vision_projector": [(1e-4, 0.0), (1e-4, 0.5)]}
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(n for g in groups.values() for _, _, n in g) == trainable  # every trained tensor, once
    for g in optimizer.param_groups:  # biases and norms: no decay
        assert all(p.ndim >= 2 for p in g["params"]) or g["weight_decay"] == 0.0
    # the schedule scales every group from its own peak
    scheduler = build_scheduler(optimizer, TrainConfig(lr=1e-4, warmup_steps=2, schedule="linear"), steps=10)
    optimizer.step()  # no gradients: nothing moves, but the schedule may now step
    scheduler.step()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["llm"] == pytest.approx(0.5e-5) and lrs["audio_projector"] == pytest.approx(1.5e-4)


def test_loraplus_gives_the_b_matrices_a_larger_rate(tokenizer_dir):
    cfg = tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen",
                            lora=LoraConfig(r=4, alpha=8, dropout=0.0, loraplus_lr_ratio=16))
    model, _ = build_model(cfg)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4), cfg)
    by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    lora = {name: by_param[id(p)] for name, p in model.named_parameters() if "lora_" in name}
    assert lora and all(lr == pytest.approx(16e-4) for n, lr in lora.items() if ".lora_B." in n)
    assert all(lr == pytest.approx(1e-4) for n, lr in lora.items() if ".lora_A." in n)
    assert {g["name"] for g in optimizer.param_groups} == {"llm", "llm.lora_B", "audio_projector", "vision_projector"}


def test_rslora_scales_by_the_square_root_of_the_rank(tokenizer_dir):
    scales = {}
    for rs in (False, True):
        cfg = tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen",
                                lora=LoraConfig(r=4, alpha=8, dropout=0.0, use_rslora=rs))
        model, _ = build_model(cfg)
        layer = next(m for n, m in model.llm.named_modules() if n.endswith("q_proj") and hasattr(m, "scaling"))
        scales[rs] = layer.scaling["default"]
    assert scales == {False: 8 / 4, True: 8 / 4 ** 0.5}


def test_dora_trains_a_magnitude_survives_a_checkpoint_and_merges_on_export(tokenizer_dir, tmp_path):
    cfg = tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen",
                            lora=LoraConfig(r=4, alpha=8, dropout=0.0, use_dora=True))
    model, _, _ = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt", cfg)  # trained a step, saved, reloaded
    magnitudes = [n for n, p in model.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert magnitudes
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in exported.named_parameters())
    ids = text_ids(AutoTokenizer.from_pretrained(out))
    torch.testing.assert_close(exported(input_ids=ids).logits.detach(), llm_logits(model, ids), atol=1e-5, rtol=0)


def test_a_run_with_part_rates_and_loraplus_resumes_with_them(tmp_path, tokenizer_dir):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    over = ["model.llm.train=lora", "model.lora.loraplus_lr_ratio=4", "model.audio.projector.lr=3e-3",
            "train.schedule=constant", "train.save_every=1"]
    assert main(["train", cfg, "max_steps=2", *over]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    lrs = {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"]}
    assert lrs["llm"] == pytest.approx(1e-3) and lrs["llm.lora_B"] == pytest.approx(4e-3)
    assert lrs["audio_projector"] == pytest.approx(3e-3)
    assert main(["train", cfg, "max_steps=3", "resume=auto", *over]) == 0
    state = json.loads((tmp_path / "run" / "checkpoint-3" / "trainer_state.json").read_text())
    assert {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"]} == lrs
