"""As a user would: a manifest with a 2-minute clip and a large image passes `mmtune data check`
and trains through the CLI, packed, with the chunked loss."""

import json

import numpy as np
import soundfile as sf
from PIL import Image

from mmtune.cli import main
from mmtune.model.placeholders import num_audio_tokens
from tests.tiny import TINY_CLIP, TINY_LLMS, TINY_WHISPER


def _write(folder, tokenizer_dir):
    rng = np.random.default_rng(0)
    for name, seconds in (("talk.flac", 120.0), ("short.wav", 0.8)):
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.shape)
        sf.write(folder / name, wave.astype(np.float32), 16000)
    Image.fromarray(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)).save(folder / "page.png")
    rows = [{"audio": "talk.flac", "text": "three one four one five nine"},
            {"audio": "short.wav", "text": "two"},
            {"messages": [{"role": "user", "content": [{"type": "image", "path": "page.png"},
                                                       {"type": "text", "text": "What is in the image?"}]},
                          {"role": "assistant", "content": "A red circle."}]}]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    llm = dict(TINY_LLMS["qwen2"], max_position_embeddings=2048)
    (folder / "config.yaml").write_text(f"""# mmtune train config.yaml
model:
  llm: {{config: {json.dumps(llm)}, tokenizer: {tokenizer_dir}, train: full}}
  audio: {{config: {json.dumps(TINY_WHISPER)}, train: frozen, projector: {{type: stack, stack: 8}}}}
  vision: {{config: {json.dumps(TINY_CLIP)}, train: frozen, max_tiles: 4}}
  attn_implementation: varlen
data: {{train: train.jsonl, batching: packed, max_tokens_per_batch: 2048, num_workers: 0}}
train: {{output_dir: {folder / 'run'}, max_steps: 2, lr: 1.0e-3, log_every: 1, gradient_checkpointing: true}}
""")
    return folder / "config.yaml"


def test_two_minute_clip_and_large_image_pass_data_check_and_train(tmp_path, tokenizer_dir, capsys):
    config = _write(tmp_path, tokenizer_dir)
    assert main(["data", "check", str(tmp_path / "train.jsonl"), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "3 rows, 3 good, 0 bad" in out and "duration 0.80 s .. 120.00 s" in out
    assert main(["train", str(config)]) == 0
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if "loss" in s and s.get("split", "train") == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert num_audio_tokens(12000, 8) == 4 * 188  # the clip's four 30 s windows in the row
