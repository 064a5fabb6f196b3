"""Stage hand-over: `model.init_from` starts a stage from the previous stage's checkpoint."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from mmtune.config import LLMConfig
from mmtune.errors import CheckpointError
from mmtune.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint, start_model
from mmtune.model.tokenizer import load_tokenizer
from tests.model.test_checkpoint import logits, train_steps
from tests.tiny import TINY_LLMS, make_batch, tiny_model_config


def run_stage(cfg, folder, batch=None, steps=3):
    """Build (from cfg.init_from when set), train `steps` Adam steps, save: -> (model, batch)."""
    model, tokenizer = start_model(cfg)
    if batch is None:
        torch.manual_seed(0)
        batch = make_batch(model, with_image=cfg.vision is not None)
    if steps:
        train_steps(model, batch, steps)
    save_checkpoint(model, tokenizer, cfg, folder)
    return model, batch


@torch.no_grad()
def loss(model, batch):
    return model(**batch).loss


def test_full_then_lora_starts_where_stage_one_ended(tokenizer_dir, tmp_path):
    stage1_cfg = tiny_model_config(tokenizer_dir, llm_train="full", tower_train="full")
    stage1, batch = run_stage(stage1_cfg, tmp_path / "stage1")
    stage2_cfg = tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen")
    stage2_cfg.init_from = str(tmp_path / "stage1")
    stage2, _ = start_model(stage2_cfg)
    stage2.eval()
    # LoRA's B starts at zero: before any stage-2 step the model is stage 1's final model
    torch.testing.assert_close(logits(stage2, batch), logits(stage1, batch), atol=1e-6, rtol=0)
    assert loss(stage2, batch).item() == pytest.approx(loss(stage1, batch).item(), abs=1e-6)
    trainable = {n.split(".")[0] for n, p in stage2.named_parameters() if p.requires_grad}
    assert trainable == {"llm", "audio_projector", "vision_projector"}  # this stage's plans, not stage 1's

    train_steps(stage2, batch, 2)
    save_checkpoint(stage2, load_tokenizer(tokenizer_dir), stage2_cfg, tmp_path / "stage2")
    shutil.rmtree(tmp_path / "stage1")  # the stage-2 folder must stand alone
    loaded, _, cfg = load_checkpoint(tmp_path / "stage2")
    assert cfg.init_from == str(tmp_path / "stage1")  # recorded, never read again
    torch.testing.assert_close(logits(loaded, batch), logits(stage2, batch), atol=1e-6, rtol=0)
    assert not torch.allclose(logits(loaded, batch), logits(stage1, batch), atol=1e-4)  # stage 2 did train


def test_lora_then_full_merges_the_adapters(tokenizer_dir, tmp_path):
    stage1, batch = run_stage(tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="lora"),
                              tmp_path / "stage1")
    stage2_cfg = tiny_model_config(tokenizer_dir, llm_train="full", tower_train="full")
    stage2_cfg.init_from = str(tmp_path / "stage1")
    stage2, _ = start_model(stage2_cfg)
    stage2.eval()
    assert not any("lora_" in n for n, _ in stage2.named_parameters())  # merged into the base weights
    torch.testing.assert_close(logits(stage2, batch), logits(stage1, batch), atol=1e-5, rtol=0)

    train_steps(stage2, batch, 2)
    save_checkpoint(stage2, load_tokenizer(tokenizer_dir), stage2_cfg, tmp_path / "stage2")
    shutil.rmtree(tmp_path / "stage1")
    loaded, _, _ = load_checkpoint(tmp_path / "stage2")
    torch.testing.assert_close(logits(loaded, batch), logits(stage2, batch), atol=1e-6, rtol=0)


def test_path_based_llm_touched_by_stage_one_is_saved_whole(tokenizer_dir, tmp_path):
    """A base from a path is not saved, unless a previous stage changed it: then the new stage keeps it whole."""
    values = dict(TINY_LLMS["llama"])
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values)).save_pretrained(
        tmp_path / "base")
    load_tokenizer(tokenizer_dir).save_pretrained(tmp_path / "base")

    stage1_cfg = tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen")
    stage1_cfg.llm = LLMConfig(path=str(tmp_path / "base"), train="lora")
    stage1, batch = run_stage(stage1_cfg, tmp_path / "stage1")
    with safe_open(str(tmp_path / "stage1" / WEIGHTS_FILE), framework="pt") as f:
        assert all("lora_" in k for k in f.keys() if k.startswith("llm."))  # stage 1: adapters only

    stage2_cfg = tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen")
    stage2_cfg.llm = LLMConfig(path=str(tmp_path / "base"), train="lora")
    stage2_cfg.init_from = str(tmp_path / "stage1")
    stage2, _ = run_stage(stage2_cfg, tmp_path / "stage2", batch, steps=2)
    assert "llm" in stage2.whole_parts
    config = json.loads((tmp_path / "stage2" / CONFIG_FILE).read_text())
    assert "llm" in config["whole_parts"]
    with safe_open(str(tmp_path / "stage2" / WEIGHTS_FILE), framework="pt") as f:
        keys = set(f.keys())
    base_layers = [k for k in keys if k.startswith("llm.") and "lora_" not in k]
    assert any(k.endswith("q_proj.base_layer.weight") for k in base_layers)  # stage 1's merged weights
    assert any(k.endswith("embed_tokens.weight") for k in base_layers)

    shutil.rmtree(tmp_path / "stage1")
    loaded, _, _ = load_checkpoint(tmp_path / "stage2")
    assert "llm" in loaded.whole_parts
    torch.testing.assert_close(logits(loaded, batch), logits(stage2, batch), atol=1e-6, rtol=0)


def test_init_from_a_checkpoint_with_other_sizes(tokenizer_dir, tmp_path):
    run_stage(tiny_model_config(tokenizer_dir), tmp_path / "stage1", steps=0)
    cfg = tiny_model_config(tokenizer_dir)
    cfg.llm.config = dict(cfg.llm.config, intermediate_size=48)
    cfg.init_from = str(tmp_path / "stage1")
    with pytest.raises(CheckpointError, match=rf"model.init_from {tmp_path / 'stage1'}: tensor "
                                              r"llm.model.layers.0.mlp.down_proj.weight has shape \(32, 64\) but "
                                              r"the model built from the config has \(32, 48\); the stages must use the same "
                                              r"model parts and sizes"):
        start_model(cfg)


def test_init_from_a_checkpoint_with_other_parts(tokenizer_dir, tmp_path):
    run_stage(tiny_model_config(tokenizer_dir, vision=False), tmp_path / "stage1", steps=0)
    cfg = tiny_model_config(tokenizer_dir, audio=False)
    cfg.init_from = str(tmp_path / "stage1")
    with pytest.raises(CheckpointError, match=r"tensors have no place in this model \(e.g. audio_.*\): the stages "
                                              r"must use the same model parts"):
        start_model(cfg)


def test_init_from_a_missing_or_damaged_folder(tokenizer_dir, tmp_path):
    cfg = tiny_model_config(tokenizer_dir)
    cfg.init_from = str(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"model.init_from: checkpoint folder .*nowhere does not exist: pass a "
                                              r"folder written by `mmtune train`"):
        start_model(cfg)
    run_stage(tiny_model_config(tokenizer_dir), tmp_path / "stage1", steps=0)
    weights = tmp_path / "stage1" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    cfg.init_from = str(tmp_path / "stage1")
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_FILE} is damaged or was replaced: its SHA-256 differs"):
        start_model(cfg)
