"""`mmtune bench data` at a tiny size: every run reports sane values, and cold / warm / eager differ as they must."""

from mmtune.bench import data


def test_tiny_run_reports_each_mode(tmp_path):
    result = data.run(sizes=(40,), steps=1, workers=1, folder=str(tmp_path))
    runs = {r["mode"]: r for r in result["runs"]}
    assert set(runs) == {"cold", "warm", "eager"}
    assert not runs["cold"]["index_cached"] and runs["warm"]["index_cached"] and runs["eager"]["index_cached"]
    for r in runs.values():
        assert r["rows"] == 40 and r["first_step_s"] > 0 and r["main_peak_rss_mb"] > 100
        assert 0 <= r["data_wait_fraction"] <= 1 and r["pipeline_samples_per_s"] > 0
    assert runs["warm"]["workers_peak_pss_mb"] > 0 and runs["eager"]["workers_peak_pss_mb"] == 0
    assert "warm_start_s_at_largest" in result["targets"]


def test_manifests_reuse_the_example_clips(tmp_path):
    path = data.write_manifest(tmp_path / "m", 2003)
    lines = path.read_text().splitlines()
    assert len(lines) == 2003 and lines[2000] == lines[0] and lines[2002] == lines[2]
