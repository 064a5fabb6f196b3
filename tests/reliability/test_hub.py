"""A hub id with no network ends in seconds in one error line naming the key and the fix; data first."""

import pytest

from mmtune.cli import main
from tests.reliability.helpers import one_error_line, run_cli
from tests.tiny import write_asr_run

HUB_LLM = ["model.llm.config=null", "model.llm.path=some-org/not-downloaded-llm"]


@pytest.fixture
def cfg(tmp_path, tokenizer_dir):
    return write_asr_run(tmp_path, tokenizer_dir)


def test_offline_and_not_cached_is_one_line_naming_the_key(cfg, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "train", cfg, *HUB_LLM)
    assert code == 1
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        "error: model.llm.path: some-org/not-downloaded-llm is a hub id that is not in the local cache, and "
        "HF_HUB_OFFLINE is set: download it once where there is network (`huggingface-cli download "
        "some-org/not-downloaded-llm`), then run with HF_HUB_OFFLINE=1, or give a local folder"]


def test_an_unreachable_hub_is_one_line_with_the_three_ways_on(cfg, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    assert main(["train", cfg, *HUB_LLM]) == 1
    error = one_error_line(capsys)
    assert "model.llm.path: some-org/not-downloaded-llm is a hub id that is not in the local cache, and " \
           "127.0.0.1:9 cannot be reached" in error
    assert "huggingface-cli download some-org/not-downloaded-llm" in error and "HF_HUB_OFFLINE=1" in error


def test_offline_names_the_setting(cfg, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", cfg, "model.llm.tokenizer=some-org/not-downloaded-tokenizer"]) == 1
    assert "model.llm.tokenizer: some-org/not-downloaded-tokenizer is a hub id that is not in the local cache, " \
           "and HF_HUB_OFFLINE is set" in one_error_line(capsys)


def test_data_check_with_a_hub_tokenizer_offline(cfg, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["data", "check", str(tmp_path / "train.jsonl"), "--config", cfg,
                 "model.llm.tokenizer=some-org/not-downloaded-tokenizer"]) == 1
    assert "is a hub id that is not in the local cache" in one_error_line(capsys)


def test_a_missing_manifest_is_named_before_any_model_is_fetched(cfg, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", cfg, *HUB_LLM, "data.train=nowhere.jsonl"]) == 1
    assert "data.train: nowhere.jsonl does not exist" in one_error_line(capsys)


def test_behind_a_proxy_the_hub_is_not_probed_directly(monkeypatch):
    from mmtune.model.hub import hub_unreachable

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub_unreachable() is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub_unreachable() is None  # only the proxy could tell: transformers goes through it
