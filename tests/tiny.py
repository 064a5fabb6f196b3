"""Tiny models and batches built offline in milliseconds, shared by the tests."""

import torch

from mmtune.config import LLMConfig, LoraConfig, ModelConfig, ProjectorConfig, TowerConfig
from mmtune.model.placeholders import num_audio_tokens, num_image_tokens

CORPUS = ["Transcribe the audio.", "three one four one five nine two six", "Which digit is written here?",
          "zero seven eight", "Is it even or odd? even odd", "What is in the image? A red circle."] * 20

TINY_LLMS = {
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300, max_position_embeddings=512),
    "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300, max_position_embeddings=512,
                  tie_word_embeddings=True),
}
TINY_WHISPER = dict(model_type="whisper", d_model=24, encoder_layers=2, encoder_attention_heads=2,
                    encoder_ffn_dim=48, num_mel_bins=80, max_source_positions=1500)
TINY_CLIP = dict(model_type="clip_vision_model", hidden_size=24, intermediate_size=48, num_hidden_layers=3,
                 num_attention_heads=2, image_size=32, patch_size=8)
TINY_SIGLIP = dict(model_type="siglip_vision_model", hidden_size=24, intermediate_size=48, num_hidden_layers=3,
                   num_attention_heads=2, image_size=32, patch_size=8)


def tiny_model_config(tokenizer_dir, llm="llama", audio=True, vision=True, llm_train="full", tower_train="full",
                      audio_projector=None, vision_projector=None, vision_config=None, lora=None) -> ModelConfig:
    return ModelConfig(
        llm=LLMConfig(config=dict(TINY_LLMS[llm]), tokenizer=tokenizer_dir, train=llm_train),
        audio=TowerConfig(config=dict(TINY_WHISPER), train=tower_train,
                          projector=audio_projector or ProjectorConfig(type="stack", stack=2)) if audio else None,
        vision=TowerConfig(config=dict(vision_config or TINY_CLIP), train=tower_train,
                           projector=vision_projector or ProjectorConfig(type="mlp", layers=2)) if vision else None,
        lora=lora or LoraConfig(r=4, alpha=8, dropout=0.0),
        attn_implementation="sdpa",
    )


def logits_of(model, batch: dict) -> torch.Tensor:
    """The model's logits (B, T, V) for a batch: a forward without labels (with labels it returns the loss only)."""
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def make_batch(model, n_frames=27, with_image=True):
    """One padded row: text, one clip's placeholders, one image's placeholders, text; all supervised."""
    a, i = model.token_ids["audio"], model.token_ids["image"]
    n_audio = num_audio_tokens(n_frames, stack=2)
    n_image = num_image_tokens(32, 8) if with_image else 0
    ids = [10, 11] + [a] * n_audio + [12] + [i] * n_image + [13, 14, 15]
    batch = dict(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]),
                 audio_features=torch.randn(1, 80, n_frames), audio_lengths=torch.tensor([n_frames]),
                 audio_owner=torch.tensor([0]), sources=["m.jsonl:7"])
    if with_image:
        batch.update(pixel_values=torch.randn(1, 3, 32, 32), image_owner=torch.tensor([0]))
    return batch


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_asr_run(folder, tokenizer_dir, rows: int = 16, overrides: str = "") -> str:
    """A tiny ASR training setup on disk: wav clips, train/eval manifests, a YAML config -> its path."""
    import json
    from pathlib import Path

    import numpy as np
    import soundfile as sf

    folder = Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(rows):
        seconds = 0.3 + 0.05 * (i % 7)
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.01 * rng.standard_normal(t.shape)
        sf.write(folder / "audio" / f"{i}.wav", wave.astype(np.float32), 16000)
        text = " ".join(DIGITS[(i + k) % 10] for k in range(1 + i % 3))
        lines.append(json.dumps({"audio": f"audio/{i}.wav", "text": text}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "eval.jsonl").write_text("\n".join(lines[:4]) + "\n")
    llm = {k: v for k, v in TINY_LLMS["qwen2"].items()}
    config = f"""# mmtune train config.yaml
model:
  llm: {{config: {json.dumps(llm)}, tokenizer: {tokenizer_dir}, train: full}}
  audio: {{config: {json.dumps(TINY_WHISPER)}, train: full, projector: {{type: stack, stack: 2}}}}
  attn_implementation: sdpa
data: {{train: train.jsonl, eval: eval.jsonl, batch_size: 4, group_by_length: false}}
train: {{output_dir: {folder / 'run'}, max_steps: 6, lr: 1.0e-3, warmup_steps: 1, log_every: 1}}
eval: {{metrics: [loss, wer], max_new_tokens: 6}}
{overrides}"""
    (folder / "config.yaml").write_text(config)
    return str(folder / "config.yaml")
