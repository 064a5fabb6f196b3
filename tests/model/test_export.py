"""Export: LoRA merged into the LLM, written as a plain transformers checkpoint."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmtune.cli import main
from mmtune.model.export import export_checkpoint
from mmtune.model.placeholders import PLACEHOLDERS
from tests.model.test_checkpoint import trained_checkpoint
from tests.tiny import tiny_model_config

# runs in a fresh interpreter: only transformers, never mmtune
PLAIN_LOAD = """
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
out, ids = sys.argv[1], [int(i) for i in sys.argv[2].split(",")]
model = AutoModelForCausalLM.from_pretrained(out).eval()
tokenizer = AutoTokenizer.from_pretrained(out)
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits
save_file({"logits": logits.contiguous()}, out + "/plain_logits.safetensors")
print(type(model).__module__, tokenizer.convert_tokens_to_ids("<|audio|>"), "mmtune" in sys.modules)
"""


@torch.no_grad()
def llm_logits(model, ids):
    return model.llm(input_ids=ids, use_cache=False).logits


def text_ids(tokenizer):
    return torch.tensor([tokenizer("three one four one five nine two six")["input_ids"]])


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_export_merges_lora_into_a_plain_transformers_llm(tokenizer_dir, tmp_path, llm):
    cfg = tiny_model_config(tokenizer_dir, llm=llm, llm_train="lora", tower_train="frozen")
    model, _, _ = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt", cfg)
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(exported).__module__.startswith(f"transformers.models.{llm}.")
    assert not any("lora" in name for name, _ in exported.named_parameters())  # merged, not wrapped
    ids = text_ids(tokenizer)
    torch.testing.assert_close(exported(input_ids=ids).logits.detach(), llm_logits(model, ids), atol=1e-5, rtol=0)
    for modality, token in PLACEHOLDERS.items():
        assert tokenizer.convert_tokens_to_ids(token) == model.token_ids[modality]
    assert tokenizer.chat_template
    assert not {p.suffix for p in out.iterdir()} & {".bin", ".pt", ".pkl"}
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == llm  # no custom code to trust
    assert config["vocab_size"] == len(tokenizer)


def test_export_keeps_towers_and_projectors_beside_the_llm(tokenizer_dir, tmp_path):
    model, _, _ = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    towers = load_file(str(out / "mmtune_towers.safetensors"))
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}
    assert set(towers) == set(expected)
    assert {k.split(".")[0] for k in towers} == {"audio_encoder", "audio_projector", "vision_tower", "vision_projector"}
    for key, tensor in expected.items():
        assert torch.equal(towers[key], tensor), key


def test_exported_llm_loads_without_mmtune(tokenizer_dir, tmp_path):
    model, _, _ = trained_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    ids = text_ids(AutoTokenizer.from_pretrained(out))
    run = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(out), ",".join(map(str, ids[0].tolist()))],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    module, audio_id, imported_mmtune = run.stdout.split()[-3:]
    assert module.startswith("transformers.models.llama.")
    assert int(audio_id) == model.token_ids["audio"]
    assert imported_mmtune == "False"
    with safe_open(str(out / "plain_logits.safetensors"), framework="pt") as f:
        plain = f.get_tensor("logits")
    torch.testing.assert_close(plain, llm_logits(model, ids), atol=1e-5, rtol=0)


def test_cli_export(tokenizer_dir, tmp_path, capsys):
    trained_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["export", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out2")]) == 1
    assert "error: checkpoint folder" in capsys.readouterr().err


def test_the_export_stops_plain_generate_at_the_end_of_turn(tokenizer_dir, tmp_path):
    from transformers import GenerationConfig

    from mmtune.data.chat import end_of_turn_ids
    from mmtune.errors import CheckpointError
    from mmtune.model.checkpoint import load_checkpoint

    cfg = tiny_model_config(tokenizer_dir, llm_train="lora", tower_train="frozen")
    trained_checkpoint(tokenizer_dir, tmp_path / "ckpt", cfg)
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(out)
    stop = sorted(end_of_turn_ids(tokenizer))  # what mmtune's own generate stops at
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop
    config = json.loads((out / "config.json").read_text())
    as_list = lambda ids: ids if isinstance(ids, list) else [ids]  # noqa: E731  one id is written as an int
    assert as_list(config["eos_token_id"]) == stop and config["pad_token_id"] == tokenizer.pad_token_id
    generation = GenerationConfig.from_pretrained(out)  # what plain `generate` reads
    assert as_list(generation.eos_token_id) == stop and generation.pad_token_id == tokenizer.pad_token_id
    # mmtune commands take the checkpoint, and say so when given the export
    with pytest.raises(CheckpointError, match=r"is an `mmtune export` .* transformers loads it .* mmtune eval, "
                                              r"generate and transcribe take the checkpoint it came from \(.*ckpt\)"):
        load_checkpoint(out)
