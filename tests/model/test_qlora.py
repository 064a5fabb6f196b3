"""QLoRA: a 4-bit NF4 base through bitsandbytes (on this CPU), LoRA on top; checkpoints, resume, export, init_from."""

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmtune.cli import main
from mmtune.config import load_config
from mmtune.errors import MmtuneError
from mmtune.model.build import build_model
from mmtune.model.checkpoint import load_checkpoint, saved_keys, start_model
from mmtune.model.export import export_checkpoint
from mmtune.model.quantize import bitsandbytes, storage_bytes
from mmtune.train.loop import train
from tests.model.test_checkpoint import trained_checkpoint
from tests.model.test_export import text_ids
from tests.tiny import make_batch, tiny_model_config, write_asr_run

bnb = pytest.importorskip("bitsandbytes")  # in the dev extra on Linux x86-64, so CI runs these


def _cfg(tokenizer_dir, plan="qlora", hidden=None):
    cfg = tiny_model_config(tokenizer_dir, llm_train=plan, tower_train="frozen")
    cfg.quantization.compute_dtype = "float32"  # exact against a float32 dequantized merge
    if hidden:
        cfg.llm.config.update(hidden_size=hidden, intermediate_size=2 * hidden)
    return cfg


@torch.no_grad()
def _llm_logits(model, ids):
    model.eval()
    return model.llm(input_ids=ids, use_cache=False).logits


def test_the_base_is_4_bit_and_only_the_adapters_and_projectors_train(tokenizer_dir):
    model, _ = build_model(_cfg(tokenizer_dir))
    linears = {n: type(m).__name__ for n, m in model.llm.named_modules() if isinstance(m, torch.nn.Linear)
               and "lora_" not in n}
    assert linears.pop("base_model.model.lm_head") == "Linear"  # the output head stays full precision
    assert set(linears.values()) == {"Linear4bit"} and len(linears) == 2 * 7  # q k v o gate up down, 2 layers
    trained = {n.split(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"llm", "audio_projector", "vision_projector"}
    assert all("lora_" in n for n, p in model.llm.named_parameters() if p.requires_grad)


def test_the_llm_part_takes_far_less_memory_than_under_lora(tokenizer_dir):
    sizes = {plan: storage_bytes(build_model(_cfg(tokenizer_dir, plan, hidden=256))[0].llm)
             for plan in ("lora", "qlora")}
    # linear weights at ~0.53 bytes a parameter against 4; embeddings, head and adapters stay float32
    assert sizes["qlora"] < 0.3 * sizes["lora"], sizes


def test_a_step_trains_the_adapters_and_leaves_the_4_bit_base_as_it_was(tokenizer_dir):
    model, _ = build_model(_cfg(tokenizer_dir))
    base = {n: b.clone() for n, b in model.llm.state_dict().items() if "base_layer.weight" in n}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(model)
    for _ in range(2):
        out = model(**batch)
        out.loss_sum.backward()
        optimizer.step()
        optimizer.zero_grad()
    b = {n: p for n, p in model.llm.named_parameters() if ".lora_B." in n}
    assert all(float(p.abs().sum()) > 0 for p in b.values())  # B starts at 0: it moved
    after = model.llm.state_dict()
    assert all(torch.equal(base[n], after[n]) for n in base)


def test_a_checkpoint_round_trip_gives_equal_logits(tokenizer_dir, tmp_path):
    cfg = _cfg(tokenizer_dir)
    model, cfg, batch = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt", cfg)
    loaded, tokenizer, loaded_cfg = load_checkpoint(tmp_path / "ckpt")
    assert loaded_cfg == cfg
    ids = text_ids(tokenizer)
    torch.testing.assert_close(_llm_logits(loaded, ids), _llm_logits(model, ids), atol=0, rtol=0)
    # the base was built from a config: its 4-bit codes and quantization state are in the checkpoint
    saved = set(saved_keys(model))
    assert any(k.endswith("weight.quant_state.bitsandbytes__nf4") for k in saved)


def test_export_merges_into_the_dequantized_base_and_loads_in_plain_transformers(tokenizer_dir, tmp_path):
    model, _, _ = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt", _cfg(tokenizer_dir))
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n or "absmax" in n for n in exported.state_dict())
    assert all(p.dtype == torch.float32 for p in exported.parameters())
    ids = text_ids(AutoTokenizer.from_pretrained(out))
    with torch.no_grad():
        plain = exported(input_ids=ids).logits
    torch.testing.assert_close(plain, _llm_logits(model, ids), atol=1e-4, rtol=0)


def test_init_from_a_qlora_stage_starts_from_its_merged_dequantized_weights(tokenizer_dir, tmp_path):
    model, _, _ = trained_checkpoint(tokenizer_dir, tmp_path / "stage1", _cfg(tokenizer_dir))
    stage2 = _cfg(tokenizer_dir, plan="full")
    stage2.init_from = str(tmp_path / "stage1")
    next_model, tokenizer = start_model(stage2)
    ids = text_ids(tokenizer)
    torch.testing.assert_close(_llm_logits(next_model, ids), _llm_logits(model, ids), atol=1e-4, rtol=0)


def test_a_qlora_run_resumes_with_the_losses_of_an_uninterrupted_one(tmp_path, tokenizer_dir, monkeypatch):
    from tests.train.fake_run import train_killed_at

    over = ["model.llm.train=qlora", "model.quantization.compute_dtype=float32", "train.save_every=2",
            "max_steps=4"]
    whole = write_asr_run(tmp_path / "a", tokenizer_dir)
    killed = write_asr_run(tmp_path / "b", tokenizer_dir)
    train(load_config(whole, over))
    train_killed_at(monkeypatch, 3, lambda: train(load_config(killed, over)))
    train(load_config(killed, over + ["resume=auto"]))

    def losses(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}

    a, b = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert all(abs(a[s] - b[s]) < 1e-6 for s in a), (a, b)


def test_without_bitsandbytes_qlora_is_one_error_line(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` sees when it is absent
    with pytest.raises(MmtuneError, match=r"train: qlora needs bitsandbytes .*pip install 'mmtune\[qlora\]'"):
        bitsandbytes()
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    assert main(["train", cfg, "model.llm.train=qlora"]) == 1
    err = capsys.readouterr().err
    assert "error: train: qlora needs bitsandbytes" in err and "Traceback" not in err
