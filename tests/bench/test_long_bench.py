"""`mmtune bench long` on a small vocabulary: the figures are there and the two losses' memory differs as
the issue expects (values, not timings)."""

import json

from mmtune.bench import long
from mmtune.cli import build_parser


def test_long_bench_measures_both_losses():
    vocab = 20_000  # for the test's time: a chunk is then 1,677 positions, so 4,096 tokens take three
    result = long.run(lengths=(4096,), hidden=32, vocab=vocab)
    assert json.loads(json.dumps(result)) == result
    assert [r["tokens"] for r in result["rows"]] == [4096] and result["vocab"] == vocab
    for row in result["rows"]:
        assert set(row) == {"tokens", "decoder", "chunked", "full"}
        # the full loss holds (T, V) float32 logits, their log-softmax and gradient; the chunked one a chunk
        assert row["full"]["loss_peak_mb"] > 2 * row["tokens"] * vocab * 4 / 2**20
        assert row["chunked"]["loss_peak_mb"] < 0.5 * row["full"]["loss_peak_mb"]
    targets = result["targets"]
    assert targets["full_loss_peak"] == "measured" and targets["loss_peak_ratio"] > 2


def test_long_bench_command_line():
    args = build_parser().parse_args(["bench", "long", "--lengths", "1024", "4096", "--json", "x.json"])
    assert (args.bench, args.lengths, args.hidden, args.json) == ("long", [1024, 4096], 64, "x.json")


def test_targets_extrapolate_a_skipped_full_loss_linearly():
    rows = [{"tokens": n, "decoder": {"peak_mb": 1.0}, "chunked": {"peak_mb": 10.0 + n / 1000, "loss_peak_mb": 5.0},
             "full": {"peak_mb": 2.0 * n, "loss_peak_mb": 2.0 * n}} for n in (1000, 2000)]
    rows.append({"tokens": 4000, "decoder": {"peak_mb": 1.0}, "chunked": {"peak_mb": 14.0, "loss_peak_mb": 5.0},
                 "full": {"skipped": "needs ~1 GiB"}})
    t = long.targets(rows)
    assert t["full_loss_peak"] == "extrapolated"
    assert abs(t["full_loss_peak_mb"] - 8000.0) < 1e-6 and abs(t["loss_peak_ratio"] - 1600.0) < 1e-6
    assert abs(t["chunked_step_mb_per_1k_tokens"] - 1.0) < 1e-6
