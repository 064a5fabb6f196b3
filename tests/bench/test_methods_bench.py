"""mmtune bench methods at a tiny size: every method runs, and the figures mean what they say."""

import json

from mmtune.bench.methods import METHODS, PRESETS
from mmtune.cli import BENCH_METHOD_PRESETS, BENCH_METHODS, main


def test_the_cli_offers_exactly_the_benchs_methods_and_presets():
    assert BENCH_METHODS == tuple(METHODS) and BENCH_METHOD_PRESETS == tuple(PRESETS)


def test_bench_methods_runs_each_method_and_qlora_holds_the_llm_in_less_memory(tmp_path, capsys):
    out = tmp_path / "methods.json"
    assert main(["bench", "methods", "--preset", "tiny", "--methods", "lora", "qlora", "hft", "--steps", "1",
                 "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["methods"]
    assert set(result) == {"lora", "qlora", "hft"}
    total = result["hft"]["parameters"]  # hft: one round's half of the layers, plus embeddings
    assert result["qlora"]["trainable"] == result["lora"]["trainable"] < result["hft"]["trainable"] < total
    assert result["qlora"]["llm_mb"] < 0.6 * result["lora"]["llm_mb"]  # tiny: embeddings stay float32
    assert result["qlora"]["llm_mb_vs_lora"] == result["qlora"]["llm_mb"] / result["lora"]["llm_mb"]
    assert all(r["peak_mb"] > 0 and r["step_s"] > 0 for r in result.values())
