"""mmtune bench whisper at a tiny size: trained, saved, reloaded with the same loss, transcribed."""

import json

from mmtune.bench.whisper import PRESETS
from mmtune.cli import BENCH_WHISPER_PRESETS, main


def test_the_cli_offers_exactly_the_benchs_presets():
    assert BENCH_WHISPER_PRESETS == tuple(PRESETS)


def test_bench_whisper_round_trips_the_checkpoint(tmp_path):
    out = tmp_path / "whisper.json"
    assert main(["bench", "whisper", "--preset", "tiny", "--encoder", "frozen", "--decoder", "lora",
                 "--max-new-tokens", "3", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 0 < result["trainable"] < result["total"]  # LoRA on the decoder only
    assert result["loss_after_reload_diff"] < 1e-4
    assert result["step_s"] > 0 and result["peak_mb"] > 0 and result["checkpoint_mb"] > 0
    assert len(result["generated"]) == 2
