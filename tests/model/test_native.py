"""Native transformers formats: a vision bridge as LLaVA, a speech bridge as Voxtral, out and back in."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoTokenizer, LlavaForConditionalGeneration, \
    VoxtralForConditionalGeneration

from mmtune.cli import main
from mmtune.config import ConfigError, ModelConfig, ProjectorConfig, TowerConfig, load_config
from mmtune.errors import CheckpointError
from mmtune.infer.generate import Predictor, collate_prompts
from mmtune.model.build import build_model
from mmtune.model.checkpoint import load_checkpoint, save_checkpoint, start_model
from mmtune.model.export import ExportError, export_checkpoint
from tests.model.test_checkpoint import train_steps
from tests.tiny import TINY_CLIP, TINY_SIGLIP, TINY_WHISPER, tiny_model_config

QUESTION = "Which digit is written here?"

# runs in a fresh interpreter: only transformers, never mmtune
PLAIN_LLAVA = """
import sys, torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor
out, image, question = sys.argv[1:4]
processor = AutoProcessor.from_pretrained(out)
model = AutoModelForImageTextToText.from_pretrained(out).eval()
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open(image).convert("RGB"), text=text, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
    new = model.generate(**inputs, max_new_tokens=6, do_sample=False)[:, inputs["input_ids"].shape[1]:]
save_file({"logits": logits.contiguous(), "input_ids": inputs["input_ids"], "pixel_values": inputs["pixel_values"],
           "new": new.contiguous()}, out + "/plain.safetensors")
print(type(model).__name__, "mmtune" in sys.modules)
"""


def vision_checkpoint(tokenizer_dir, folder, llm="qwen2", vision_config=None, seed=0, **kwargs):
    """A vision-only bridge (LoRA on the LLM and the tower), trained 2 steps on one image row, saved."""
    cfg = tiny_model_config(tokenizer_dir, llm=llm, audio=False, llm_train="lora", tower_train="lora",
                            vision_config=vision_config, **kwargs)
    model, tokenizer = build_model(cfg)
    torch.manual_seed(seed)
    ids = [10, 11] + [model.token_ids["image"]] * 16 + [13, 14, 15]
    train_steps(model, dict(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]),
                            pixel_values=torch.randn(1, 3, 32, 32), image_owner=torch.tensor([0])))
    save_checkpoint(model, tokenizer, cfg, folder)
    return cfg


def speech_checkpoint(tokenizer_dir, folder, seed=0):
    """A speech-only bridge with Voxtral's projector (stack 2 = TINY_WHISPER's 48 / 24), trained 2 steps, saved."""
    cfg = tiny_model_config(tokenizer_dir, llm="qwen2", vision=False, llm_train="lora", tower_train="lora",
                            audio_projector=ProjectorConfig(type="stack_mlp", stack=2))  # qwen2: no head_dim key
    model, tokenizer = build_model(cfg)
    torch.manual_seed(seed)
    ids = [10, 11] + [model.token_ids["audio"]] * 7 + [13, 14, 15]
    train_steps(model, dict(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]),
                            audio_features=torch.randn(1, 80, 27), audio_lengths=torch.tensor([27]),
                            audio_owner=torch.tensor([0])))
    save_checkpoint(model, tokenizer, cfg, folder)
    return cfg


def an_image(path, size=(40, 28), seed=0):
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(path)
    return str(path)


def mmtune_prompt(predictor, media, text=QUESTION):
    example = predictor.encoder.prompt(predictor.sample(text, media))
    return example, collate_prompts([example], predictor.tokenizer.pad_token_id)


@torch.no_grad()
def mmtune_logits_and_answer(predictor, batch, max_new_tokens=6):
    media = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "sources")}
    logits = predictor.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **media).logits
    new = predictor.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=predictor.tokenizer.pad_token_id)
    return logits, new


# ---- LLaVA out ----------------------------------------------------------------------------------

def test_vision_export_is_a_llava_that_plain_transformers_runs_as_mmtune_does(tokenizer_dir, tmp_path):
    vision_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    image = an_image(tmp_path / "img.png")  # not square: the crop matters
    run = subprocess.run([sys.executable, "-c", PLAIN_LLAVA, str(out), image, QUESTION], capture_output=True,
                         text=True, timeout=180, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-2:] == ["LlavaForConditionalGeneration", "False"]  # loaded without mmtune
    plain = load_file(str(out / "plain.safetensors"))
    predictor = Predictor.from_checkpoint(str(tmp_path / "ckpt"), device="cpu")
    example, batch = mmtune_prompt(predictor, [("image", image)])
    assert torch.equal(plain["input_ids"][0], example.input_ids)  # chat template, placeholders, image tokens
    assert torch.equal(plain["pixel_values"][0], example.images[0][0])  # resize, crop, normalize
    logits, new = mmtune_logits_and_answer(predictor, batch)
    assert (plain["logits"] - logits).abs().max() <= 1e-4
    assert torch.equal(plain["new"], new)  # the same greedy answer
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava" and "auto_map" not in config
    assert config["image_token_index"] == predictor.model.token_ids["image"]
    assert config["vision_feature_select_strategy"] == "default"  # CLIP's class token dropped, as mmtune does
    marker = json.loads((out / "mmtune_export.json").read_text())
    assert marker["architecture"] == "LlavaForConditionalGeneration"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<|im_end|>")
    with pytest.raises(CheckpointError, match=r"is an `mmtune export` \(a transformers LlavaForConditionalGeneration "
                                              r"folder: transformers loads it, and model.init_from starts a new run"):
        load_checkpoint(out)


@pytest.mark.parametrize("resize", ["pad", "crop"])
def test_siglip_llava_export_pads_to_square_as_mmtune(tokenizer_dir, tmp_path, resize):
    from transformers import AutoProcessor

    from mmtune.config import DataConfig

    vision_checkpoint(tokenizer_dir, tmp_path / "ckpt", llm="llama", vision_config=TINY_SIGLIP)
    _, tokenizer, cfg = load_checkpoint(tmp_path / "ckpt")
    model, _, _ = load_checkpoint(tmp_path / "ckpt")
    save_checkpoint(model, tokenizer, cfg, tmp_path / "ckpt2", data=DataConfig(image_resize=resize))
    out = export_checkpoint(tmp_path / "ckpt2", tmp_path / "out")
    processor = AutoProcessor.from_pretrained(out)
    native = LlavaForConditionalGeneration.from_pretrained(out).eval()
    image = an_image(tmp_path / "img.png", size=(21, 37), seed=3)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image), text=text, return_tensors="pt")
    predictor = Predictor.from_checkpoint(str(tmp_path / "ckpt2"), device="cpu", data=DataConfig(image_resize=resize))
    example, batch = mmtune_prompt(predictor, [("image", image)])
    assert processor.image_processor.do_pad == (resize == "pad")
    assert torch.equal(inputs["input_ids"][0], example.input_ids)
    assert (inputs["pixel_values"][0] - example.images[0][0]).abs().max() <= 1e-6
    logits, _ = mmtune_logits_and_answer(predictor, batch)
    with torch.no_grad():
        assert (native(**inputs).logits - logits).abs().max() <= 1e-4
    assert json.loads((out / "config.json").read_text())["vision_feature_select_strategy"] == "full"  # every patch


def test_export_formats_say_what_they_write(tokenizer_dir, tmp_path):
    from tests.model.test_checkpoint import trained_checkpoint

    trained_checkpoint(tokenizer_dir, tmp_path / "omni")  # audio and vision towers: no native architecture
    out = export_checkpoint(tmp_path / "omni", tmp_path / "out")
    assert (out / "mmtune_towers.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    with pytest.raises(ExportError, match="--format native: this model cannot be written as a native transformers "
                                          "model: it has an audio and a vision tower"):
        export_checkpoint(tmp_path / "omni", tmp_path / "out2", format="native")
    vision_checkpoint(tokenizer_dir, tmp_path / "vision")
    out = export_checkpoint(tmp_path / "vision", tmp_path / "out3", format="llm")  # the LLM alone, on request
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    assert main(["export", "--checkpoint", str(tmp_path / "vision"), "--out", str(tmp_path / "out4"),
                 "--format", "native"]) == 0
    assert json.loads((tmp_path / "out4" / "config.json").read_text())["model_type"] == "llava"


# ---- Voxtral out --------------------------------------------------------------------------------

def voxtral_inputs(out, wave, text="Transcribe the audio."):
    """What a transformers user feeds the exported Voxtral: the feature extractor's 30 s windows, and the
    tokenizer's chat template with the audio placeholder repeated for each window's tokens."""
    tokenizer, features = AutoTokenizer.from_pretrained(out), AutoFeatureExtractor.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    mel = features(wave, sampling_rate=16000, return_tensors="pt").input_features  # (windows, n_mels, 3000)
    audio = config["audio_config"]
    per_window = audio["max_source_positions"] // (audio["intermediate_size"] // audio["hidden_size"])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"<|audio|>\n{text}"}], tokenize=False,
                                           add_generation_prompt=True)
    prompt = prompt.replace("<|audio|>", "<|audio|>" * (per_window * mel.shape[0]))
    return tokenizer(prompt, return_tensors="pt").input_ids, mel


def test_speech_export_is_a_voxtral_that_computes_what_mmtune_does_on_30_s_windows(tokenizer_dir, tmp_path):
    speech_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    native = VoxtralForConditionalGeneration.from_pretrained(out).eval()
    wave = (np.random.default_rng(0).standard_normal(16000 * 30) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, 16000)
    input_ids, mel = voxtral_inputs(out, wave)
    predictor = Predictor.from_checkpoint(str(tmp_path / "ckpt"), device="cpu")
    example, batch = mmtune_prompt(predictor, [("audio", str(tmp_path / "a.wav"))], "Transcribe the audio.")
    assert torch.equal(input_ids[0], example.input_ids)  # 750 audio tokens: one 30 s window, 1500 frames / 2
    # the extractor's last frame of a 30 s clip reflects at the cut where mmtune reads zeros (audio.features),
    # which attention spreads to every token: the same mel frames go to both models, which must then agree
    batch["audio_features"] = mel
    logits, new = mmtune_logits_and_answer(predictor, batch)
    with torch.no_grad():
        assert (native(input_ids=input_ids, input_features=mel).logits - logits).abs().max() <= 1e-4
        plain = native.generate(input_ids=input_ids, input_features=mel, max_new_tokens=6, do_sample=False)
    assert torch.equal(plain[:, input_ids.shape[1]:], new)
    assert json.loads((out / "config.json").read_text())["model_type"] == "voxtral"


def test_a_model_trained_on_padded_clips_exports_to_a_voxtral_that_transcribes_short_clips_as_mmtune(
        tokenizer_dir, tmp_path):
    """model.audio.encoder_input: padded fills every clip to the 30 s window, as Voxtral's processor does: the
    export then computes what mmtune computes on a 2 s clip too (the same tokens, logits and answer)."""
    cfg = tiny_model_config(tokenizer_dir, llm="qwen2", vision=False, llm_train="lora", tower_train="lora",
                            audio_projector=ProjectorConfig(type="stack_mlp", stack=2))
    cfg.audio.encoder_input = "padded"
    model, tokenizer = build_model(cfg)
    ids = [10, 11] + [model.token_ids["audio"]] * 750 + [13, 14, 15]  # a padded window: 1500 frames / 2
    train_steps(model, dict(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]),
                            audio_features=torch.randn(1, 80, 3000), audio_lengths=torch.tensor([3000]),
                            audio_owner=torch.tensor([0])))
    save_checkpoint(model, tokenizer, cfg, tmp_path / "ckpt")
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    t = np.arange(32000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t)).astype(np.float32)  # 2 s
    sf.write(tmp_path / "a.wav", wave, 16000)
    input_ids, mel = voxtral_inputs(out, wave)
    predictor = Predictor.from_checkpoint(str(tmp_path / "ckpt"), device="cpu")
    example, batch = mmtune_prompt(predictor, [("audio", str(tmp_path / "a.wav"))], "Transcribe the audio.")
    assert example.audio[0].shape == (80, 3000)  # the clip and silence after it fill the window
    # padded first, as the extractor pads (its float64 STFT against mmtune's float32: 0.013 at most here)
    assert (example.audio[0] - mel[0]).abs().max() <= 0.02
    assert torch.equal(input_ids[0], example.input_ids)
    batch["audio_features"] = mel  # the models compared on the same frames
    logits, new = mmtune_logits_and_answer(predictor, batch)
    native = VoxtralForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        assert (native(input_ids=input_ids, input_features=mel).logits - logits).abs().max() <= 1e-4
        plain = native.generate(input_ids=input_ids, input_features=mel, max_new_tokens=6, do_sample=False)
    assert torch.equal(plain[:, input_ids.shape[1]:], new)


def test_padded_encoder_input_refuses_clips_longer_than_its_window(tokenizer_dir, tmp_path):
    from mmtune.config import DataConfig
    from mmtune.data.encode import MediaSpec, SampleEncoder
    from mmtune.data.formats import Sample
    from mmtune.errors import DataError
    from mmtune.model.tokenizer import load_tokenizer

    cfg = tiny_model_config(tokenizer_dir, vision=False)
    cfg.audio.encoder_input, cfg.audio.window_seconds = "padded", 1.0
    encoder = SampleEncoder(load_tokenizer(tokenizer_dir), MediaSpec.from_config(cfg, DataConfig()), DataConfig())
    sf.write(tmp_path / "long.wav", np.zeros(16000 * 2, dtype=np.float32) + 0.1, 16000)
    sample = Sample([{"role": "user", "content": [{"type": "audio", "path": str(tmp_path / "long.wav")}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "one"}]}], "m.jsonl:1")
    with pytest.raises(DataError, match=r"long.wav is 2.0 s long; with model.audio.encoder_input: padded the encoder "
                                         r"hears at most 1 s"):
        encoder.measure(sample)
    with pytest.raises(ConfigError, match="vision.encoder_input: padded encoder input is for the audio tower"):
        ModelConfig(llm=cfg.llm, vision=TowerConfig(config=dict(TINY_CLIP), encoder_input="padded"))


def test_voxtral_export_refuses_a_stack_its_encoder_cannot_reshape(tokenizer_dir, tmp_path):
    cfg = tiny_model_config(tokenizer_dir, vision=False, audio_projector=ProjectorConfig(type="stack_mlp", stack=3))
    model, tokenizer = build_model(cfg)
    save_checkpoint(model, tokenizer, cfg, tmp_path / "ckpt")
    with pytest.raises(Exception, match=r"Voxtral stacks encoder_ffn_dim / d_model = 48 / 24 frames per token; this "
                                        r"model's stack_mlp projector stacks 3"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- in: model.init_from a native folder -------------------------------------------------------

def native_start_config(tmp_path, folder, tower: str, extra: str = "") -> str:
    """A config that starts from a native folder and says only what trains."""
    path = tmp_path / f"from_{tower}.yaml"
    path.write_text(f"model:\n  init_from: {folder}\n  llm: {{train: lora}}\n  {tower}: {{train: frozen}}\n"
                    f"  lora: {{r: 4, alpha: 8, dropout: 0.0}}\n  attn_implementation: sdpa\n{extra}")
    return str(path)


def test_llava_folder_imported_exported_again_gives_the_same_logits(tokenizer_dir, tmp_path):
    vision_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    first = export_checkpoint(tmp_path / "ckpt", tmp_path / "first")
    cfg = load_config(native_start_config(tmp_path, first, "vision"))
    assert cfg.model.llm.config["model_type"] == "qwen2" and cfg.model.llm.tokenizer == str(first)
    # TINY_CLIP has 3 layers and mmtune feeds the second to last: the export holds the 2 layers up to it
    assert cfg.model.vision.config["num_hidden_layers"] == 2 and cfg.model.vision.feature_layer == -1
    model, tokenizer = start_model(cfg.model)
    original, _, _ = load_checkpoint(tmp_path / "ckpt")
    ids = [10, 11] + [original.token_ids["image"]] * 16 + [13, 14, 15]
    batch = dict(input_ids=torch.tensor([ids]), pixel_values=torch.randn(1, 3, 32, 32), image_owner=torch.tensor([0]))
    with torch.no_grad():
        assert (model.eval()(**batch).logits - original(**batch).logits).abs().max() <= 1e-5
    assert model.whole_parts >= {"llm", "vision_tower", "vision_projector"}  # checkpoints keep what came in
    save_checkpoint(model, tokenizer, cfg.model, tmp_path / "imported")
    second = export_checkpoint(tmp_path / "imported", tmp_path / "second")
    a = LlavaForConditionalGeneration.from_pretrained(first).eval()
    b = LlavaForConditionalGeneration.from_pretrained(second).eval()
    native_batch = dict(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])
    with torch.no_grad():
        assert (a(**native_batch).logits - b(**native_batch).logits).abs().max() <= 1e-5


def test_voxtral_folder_imported_gives_the_same_logits(tokenizer_dir, tmp_path):
    speech_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    cfg = load_config(native_start_config(tmp_path, out, "audio"))
    assert cfg.model.audio.projector.type == "stack_mlp" and cfg.model.audio.projector.stack == 2
    assert cfg.model.audio.config["d_model"] == TINY_WHISPER["d_model"]
    model, _ = start_model(cfg.model)
    original, _, _ = load_checkpoint(tmp_path / "ckpt")
    ids = [10, 11] + [original.token_ids["audio"]] * 7 + [13, 14, 15]
    batch = dict(input_ids=torch.tensor([ids]), audio_features=torch.randn(1, 80, 27),
                 audio_lengths=torch.tensor([27]), audio_owner=torch.tensor([0]))
    with torch.no_grad():
        assert (model.eval()(**batch).logits - original(**batch).logits).abs().max() <= 1e-5


def write_vqa_rows(folder, rows=12):
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(rows):
        an_image(folder / "images" / f"{i}.png", size=(24 + i, 30), seed=i)
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": [{"type": "image", "path": f"images/{i}.png"},
                                         {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": ["zero", "one", "two"][i % 3]}]}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "eval.jsonl").write_text("\n".join(lines[:4]) + "\n")


def test_an_imported_llava_trains_with_mmtune(tokenizer_dir, tmp_path):
    vision_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    folder = export_checkpoint(tmp_path / "ckpt", tmp_path / "llava")
    write_vqa_rows(tmp_path)
    config = native_start_config(tmp_path, folder, "vision", extra=(
        "data: {train: train.jsonl, eval: eval.jsonl, batch_size: 4, batching: packed, max_length: 64}\n"
        f"train: {{output_dir: {tmp_path / 'run'}, max_steps: 3, lr: 1.0e-3, warmup_steps: 1, log_every: 1}}\n"
        "eval: {metrics: [loss, accuracy], max_new_tokens: 4}\n"))
    assert main(["train", config]) == 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line and '"split"' not in line]
    assert len(losses) >= 3 and all(np.isfinite(losses))
    model, _, cfg = load_checkpoint(tmp_path / "run" / "final")  # the whole imported model is in the checkpoint
    assert cfg.vision.config["model_type"] == "clip_vision_model"
    assert main(["export", "--checkpoint", str(tmp_path / "run" / "final"), "--out", str(tmp_path / "again")]) == 0


def test_native_folders_that_do_not_fit_are_named(tokenizer_dir, tmp_path):
    vision_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    folder = export_checkpoint(tmp_path / "ckpt", tmp_path / "llava")
    bad = native_start_config(tmp_path, folder, "vision", extra="")
    text = open(bad).read().replace("{train: frozen}", "{train: frozen, projector: {type: linear}}")
    open(bad, "w").write(text)
    with pytest.raises(ConfigError, match=r"model.vision.projector.type: 'linear', but model.init_from .* has 'mlp'"):
        load_config(bad)
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps(dict(config, model_type="qwen2_vl")))
    with pytest.raises(ConfigError, match=r"is a 'qwen2_vl' transformers folder; mmtune starts from llava and "
                                          r"voxtral folders"):
        load_config(native_start_config(tmp_path, tmp_path / "other", "vision"))
    processor = json.loads((folder / "processor_config.json").read_text())
    processor["image_processor"]["do_pad"] = True
    (folder / "processor_config.json").write_text(json.dumps(processor))
    assert load_config(native_start_config(tmp_path, folder, "vision")).data.image_resize == "pad"  # follows it
    with pytest.raises(ConfigError, match=r"data.image_resize: 'crop', but model.init_from .*processor_config.json "
                                          r"\(do_pad True\) has 'pad'"):
        load_config(native_start_config(tmp_path, folder, "vision", extra="data: {image_resize: crop}\n"))


def test_a_llava_folder_whose_template_lives_with_its_processor_trains_under_that_template(tokenizer_dir, tmp_path):
    """As llava-hf's checkpoints: the tokenizer has no chat template, the processor's (chat_template.json)
    renders content parts only; the import takes it, and the labels are the answers under it."""
    from mmtune.data.chat import render_conversation
    from tests.data.test_chat_templates import PARTS_ONLY

    vision_checkpoint(tokenizer_dir, tmp_path / "ckpt")
    folder = export_checkpoint(tmp_path / "ckpt", tmp_path / "llava")
    (folder / "chat_template.jinja").unlink()
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": PARTS_ONLY}))
    cfg = load_config(native_start_config(tmp_path, folder, "vision"))
    assert cfg.model.llm.chat_template == PARTS_ONLY
    model, tokenizer = start_model(cfg.model)
    messages = [{"role": "user", "content": [{"type": "image", "path": "x.png"}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": [{"type": "text", "text": "seven"}]}]
    ids, labels = render_conversation(tokenizer, messages, {"image": [16], "audio": []})
    text = tokenizer.decode(ids)
    assert text.startswith("USER:\n") and "ASSISTANT:\nseven" in text
    assert int((ids == tokenizer.convert_tokens_to_ids("<|image|>")).sum()) == 16
    assert tokenizer.decode(labels[labels != -100]).startswith("seven")
    # exported again, its processor's template (the wrapper around the parts-only one) gives mmtune's prompt
    from transformers import AutoProcessor

    from mmtune.data.chat import render_prompt

    save_checkpoint(model, tokenizer, cfg.model, tmp_path / "trained")
    processor = AutoProcessor.from_pretrained(export_checkpoint(tmp_path / "trained", tmp_path / "again"))
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    image = Image.open(an_image(tmp_path / "img.png"))
    inputs = processor(images=image, text=processor.apply_chat_template(user, add_generation_prompt=True),
                       return_tensors="pt")
    assert torch.equal(inputs["input_ids"][0], render_prompt(tokenizer, messages, {"image": [16], "audio": []}))
