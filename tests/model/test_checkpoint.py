"""Checkpoints: what is saved, what a load rebuilds, and the messages for bad folders."""

import json
import pickle
import shutil

import pytest
import torch
import transformers
from safetensors import safe_open
from transformers import (AutoConfig, AutoModelForCausalLM, CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel,
                          WhisperConfig, WhisperModel)

from mmtune.config import LLMConfig, TowerConfig
from mmtune.errors import CheckpointError
from mmtune.model.build import UnknownModelError, build_model
from mmtune.model.checkpoint import (CHECKSUMS_FILE, CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint,
                                     saved_keys)
from mmtune.model.tokenizer import load_tokenizer
from tests.tiny import TINY_CLIP, TINY_LLMS, TINY_WHISPER, make_batch, tiny_model_config


def train_steps(model, batch, steps=2):
    """Adam steps on one batch, so every trainable weight differs from its (rebuildable) init."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def logits(model, batch):
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def file_keys(folder) -> set[str]:
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        return set(f.keys())


def trained_checkpoint(tokenizer_dir, folder, cfg=None, seed=0):
    """Build, train 2 steps, save: -> (model, cfg, batch) as they were at save time."""
    cfg = cfg or tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen")
    model, tokenizer = build_model(cfg)
    torch.manual_seed(seed)
    batch = make_batch(model, with_image=cfg.vision is not None)
    train_steps(model, batch)
    save_checkpoint(model, tokenizer, cfg, folder)
    return model, cfg, batch


# ---- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("llm", ["llama", "qwen2"])
@pytest.mark.parametrize("llm_train,tower_train", [("lora", "frozen"), ("full", "lora"), ("frozen", "full")])
def test_round_trip_gives_equal_logits(tokenizer_dir, tmp_path, llm, llm_train, tower_train):
    cfg = tiny_model_config(tokenizer_dir, llm=llm, llm_train=llm_train, tower_train=tower_train)
    model, cfg, batch = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt", cfg)
    loaded, _, loaded_cfg = load_checkpoint(tmp_path / "ckpt")
    assert loaded_cfg == cfg
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-6, rtol=0)
    keys = file_keys(tmp_path / "ckpt")
    assert keys == set(saved_keys(model))
    assert {n for n, p in model.named_parameters() if p.requires_grad} <= keys  # everything trained is kept
    state = loaded.state_dict()
    for key in keys:  # and loaded bit for bit, not just close
        assert torch.equal(state[key], model.state_dict()[key]), key


def test_save_is_atomic_and_replaces_an_older_folder(tokenizer_dir, tmp_path):
    model, cfg, batch = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "stale.txt").write_text("from the run before")
    save_checkpoint(model, load_tokenizer(tokenizer_dir), cfg, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary sibling left behind
    assert not (tmp_path / "ckpt" / "stale.txt").exists()
    config = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert config["format"] == "mmtune" and config["version"] == 1
    assert config["model"]["llm"]["config"]["model_type"] == "llama"
    assert config["whole_parts"] == sorted(["llm", "audio_encoder", "vision_tower", "audio_projector",
                                            "vision_projector"])


# ---- path-based bases: only what was trained is saved -------------------------------------------

def _save_bases(tmp_path, tokenizer_dir, full_clip: bool) -> dict:
    """A tiny 'pretrained' LLM (with its tokenizer), Whisper and CLIP saved as transformers checkpoints."""
    torch.manual_seed(1)
    llm = AutoModelForCausalLM.from_config(_llm_config())
    llm.save_pretrained(tmp_path / "llm")
    load_tokenizer(tokenizer_dir).save_pretrained(tmp_path / "llm")
    whisper = {k: v for k, v in TINY_WHISPER.items() if k != "model_type"}
    WhisperModel(WhisperConfig(**whisper, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=48,
                               vocab_size=100, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                               eos_token_id=2, decoder_start_token_id=3)).save_pretrained(tmp_path / "whisper")
    clip = {k: v for k, v in TINY_CLIP.items() if k != "model_type"}
    if full_clip:
        text = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=100, max_position_embeddings=16)
        full = CLIPModel(CLIPConfig(text_config=text, vision_config=clip, projection_dim=16))
        full.save_pretrained(tmp_path / "clip")
    else:
        CLIPVisionModel(CLIPVisionConfig(**clip)).save_pretrained(tmp_path / "clip")
    return {name: str(tmp_path / name) for name in ("llm", "whisper", "clip")}


def _llm_config():
    values = dict(TINY_LLMS["llama"])
    return AutoConfig.for_model(values.pop("model_type"), **values)


@pytest.mark.parametrize("full_clip", [False, True])
def test_path_based_bases_are_not_saved(tokenizer_dir, tmp_path, full_clip):
    paths = _save_bases(tmp_path, tokenizer_dir, full_clip)
    cfg = tiny_model_config(tokenizer_dir)
    cfg.llm = LLMConfig(path=paths["llm"], train="lora")
    cfg.audio = TowerConfig(path=paths["whisper"], train="frozen", projector=cfg.audio.projector)
    cfg.vision = TowerConfig(path=paths["clip"], train="frozen", projector=cfg.vision.projector)
    model, cfg, batch = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt", cfg)
    keys = file_keys(tmp_path / "ckpt")
    assert keys == set(saved_keys(model))
    assert all("lora_" in k for k in keys if k.startswith("llm."))
    assert any(k.startswith("llm.") for k in keys)
    assert not any(k.startswith(("audio_encoder.", "vision_tower.")) for k in keys)
    assert {k.split(".")[0] for k in keys} == {"llm", "audio_projector", "vision_projector"}
    weights = (tmp_path / "ckpt" / WEIGHTS_FILE).stat().st_size
    base = (tmp_path / "llm" / "model.safetensors").stat().st_size
    assert weights < base / 2, (weights, base)  # adapters and projectors only
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-6, rtol=0)


# ---- no pickle ------------------------------------------------------------------------------------

def test_no_pickle_is_written_or_read(tokenizer_dir, tmp_path, monkeypatch):
    model, _, batch = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    suffixes = {p.suffix for p in (tmp_path / "ckpt").rglob("*") if p.is_file()}
    assert not suffixes & {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}, suffixes

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-6, rtol=0)


# ---- bad folders ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tokenizer_dir, tmp_path_factory):
    """A trained checkpoint (all parts) and one without a vision tower, to be copied and damaged."""
    root = tmp_path_factory.mktemp("saved")
    trained_checkpoint(tokenizer_dir, root / "full")
    no_vision = tiny_model_config(tokenizer_dir, vision=False, llm_train="lora", tower_train="frozen")
    trained_checkpoint(tokenizer_dir, root / "no_vision", no_vision)
    return root


def _copy(saved, tmp_path, name="full"):
    return shutil.copytree(saved / name, tmp_path / name)


def _edit_config(folder, edit):
    config = json.loads((folder / CONFIG_FILE).read_text())
    edit(config["model"])
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def test_unknown_model_type_in_the_config_file(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_config(folder, lambda m: m["llm"]["config"].update(model_type="not_a_model"))
    with pytest.raises(UnknownModelError) as e:
        load_checkpoint(folder)
    assert str(e.value) == (f"{folder / CONFIG_FILE}: model.llm.config: unknown model_type 'not_a_model': transformers "
                            f"{transformers.__version__} has no such architecture; use a causal LM type it knows "
                            f"(e.g. llama, qwen2, mistral, gemma) or upgrade transformers")
    _edit_config(folder, lambda m: (m["llm"]["config"].update(model_type="llama"),
                                    m["vision"]["config"].update(model_type="vit")))
    with pytest.raises(UnknownModelError, match=r"model.vision.config: model type 'vit' is not supported here; "
                                                r"use one of: clip"):
        load_checkpoint(folder)


def test_projector_trained_for_another_tower_size(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    _edit_config(folder, lambda m: m["vision"]["config"].update(hidden_size=32))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder)
    msg = str(e.value)
    assert "tensor vision_projector." in msg
    assert "the projector was trained for a tower with hidden size 24 but this tower gives 32" in msg
    assert "use the tower the checkpoint was trained with" in msg


@pytest.mark.parametrize("name", [WEIGHTS_FILE, CONFIG_FILE])
def test_missing_file_names_it_and_the_fix(saved, tmp_path, name):
    folder = _copy(saved, tmp_path)
    (folder / name).unlink()
    with pytest.raises(CheckpointError, match=rf"checkpoint folder {folder} lacks {name}: it is not a complete mmtune "
                                              r"checkpoint; pass OUTPUT_DIR/final or an OUTPUT_DIR/checkpoint-N"):
        load_checkpoint(folder)


def test_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint folder .*nowhere does not exist: pass a folder written by "
                                              r"`mmtune train` \(OUTPUT_DIR/final"):
        load_checkpoint(tmp_path / "nowhere")


def test_weights_of_another_config(saved, tmp_path):
    folder = _copy(saved, tmp_path, "no_vision")
    shutil.copy(saved / "full" / WEIGHTS_FILE, folder / WEIGHTS_FILE)  # vision tensors this model lacks
    with pytest.raises(CheckpointError, match=r"model.safetensors is damaged or was replaced: its SHA-256 differs"):
        load_checkpoint(folder)
    (folder / CHECKSUMS_FILE).unlink()  # without checksums (an earlier version's folder) the names are checked
    with pytest.raises(CheckpointError, match=r"\d+ tensors have no place in this model \(e.g. vision_.*"
                                              rf"{CONFIG_FILE} does not match the weights"):
        load_checkpoint(folder)
    folder = _copy(saved, tmp_path)
    shutil.copy(saved / "no_vision" / WEIGHTS_FILE, folder / WEIGHTS_FILE)  # no vision tensors at all
    (folder / CHECKSUMS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"lacks \d+ trained tensors \(e.g. vision_.*use an earlier checkpoint"):
        load_checkpoint(folder)


def test_corrupt_config_json(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / CONFIG_FILE).write_text('{"format": "mmtune", "model": {')
    with pytest.raises(CheckpointError, match=rf"{CONFIG_FILE} is not valid JSON .*the checkpoint is damaged, "
                                              r"use an earlier checkpoint-N folder"):
        load_checkpoint(folder)
    (folder / CONFIG_FILE).write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match=rf"{CONFIG_FILE} is not an mmtune checkpoint config"):
        load_checkpoint(folder)


def test_truncated_weights_file(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    data = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_FILE} is damaged or was replaced"):
        load_checkpoint(folder)
    (folder / CHECKSUMS_FILE).unlink()  # an earlier version's folder: safetensors itself finds the cut
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_FILE} cannot be read"):
        load_checkpoint(folder)
