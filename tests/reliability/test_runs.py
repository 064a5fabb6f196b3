"""Runs never lose, mix or poison work: output_dir ownership, resume settings, checkpoints you can trust.

Each test replays a case a hostile but realistic user hit, through `mmtune train` as they ran it.
"""

import errno
import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import torch

from mmtune.cli import main
from mmtune.config import load_config
from mmtune.model import checkpoint as checkpoint_module
from mmtune.model.bridge import MultimodalLM
from mmtune.model.checkpoint import CHECKSUMS_FILE, WEIGHTS_FILE, load_checkpoint
from mmtune.train.loop import train
from mmtune.train.rundir import LOCK_FILE
from tests.reliability.helpers import one_error_line
from tests.tiny import write_asr_run


def _train(cfg, *overrides) -> int:
    return main(["train", cfg, *overrides])


def _lock(out, pid: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))


@pytest.fixture
def asr(tmp_path, tokenizer_dir):
    return write_asr_run(tmp_path, tokenizer_dir), tmp_path / "run"


HOLD = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "earlier"}).encode())
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_into_a_held_output_dir_is_refused_naming_the_holder(asr, capsys):
    cfg, out = asr
    out.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _train(cfg, "max_steps=1") == 1
        error = one_error_line(capsys)
        assert f"is in use by another run (PID {holder.pid} on {socket.gethostname()}" in error
        assert str(out / LOCK_FILE) in error
        assert not (out / "metrics.jsonl").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    assert _train(cfg, "max_steps=1") == 0  # killed: the kernel dropped its lock


def test_the_lock_of_a_killed_run_is_taken_over_and_released_at_the_end(asr):
    cfg, out = asr
    _lock(out, pid=1)  # a lock file a killed run (of any host, any PID: here PID 1) left, no flock on it
    assert _train(cfg, "max_steps=1") == 0
    assert (out / "final").is_dir() and not (out / LOCK_FILE).exists()


def test_rerunning_into_a_finished_run_is_refused_and_keeps_it(asr, capsys):
    cfg, out = asr
    assert _train(cfg, "max_steps=2") == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _train(cfg, "max_steps=1") == 1
    error = one_error_line(capsys)
    assert f"train.output_dir {out} holds another run (checkpoint-2, final, metrics.jsonl" in error
    assert "resume=auto" in error and "train.overwrite=true" in error
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # metrics, final/, checkpoints, report: every byte kept


def test_overwrite_clears_the_old_run_so_resume_auto_continues_the_new_one(asr):
    cfg, out = asr
    assert _train(cfg, "max_steps=4", "train.save_every=2") == 0
    assert _train(cfg, "max_steps=2", "train.overwrite=true", "train.save_every=1") == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # the old run's step-4 records went with it
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["config"]["train"]["max_steps"] == 2


def test_resume_refuses_a_changed_setting_and_lists_it(asr, capsys):
    cfg, out = asr
    assert _train(cfg, "max_steps=2", "train.save_every=1") == 0
    capsys.readouterr()
    assert _train(cfg, "max_steps=4", "resume=auto", "lr=3e-4", "data.batch_size=2") == 1
    error = one_error_line(capsys)
    assert "was trained with other settings: data.batch_size 4 -> 2, train.lr 0.001 -> 0.0003" in error
    assert "model.init_from=" in error


def test_resume_applies_a_logging_change_and_the_report_says_so(asr):
    cfg, out = asr
    assert _train(cfg, "max_steps=2", "train.save_every=1") == 0
    assert _train(cfg, "max_steps=3", "resume=auto", "train.log_every=5") == 0
    report = (out / "report.md").read_text()
    assert "changed on resume: at step 2" in report
    assert "train.log_every 1 -> 5" in report and "train.max_steps 2 -> 3" in report
    assert "train.lr" not in report.split("changed on resume")[1]


def test_resume_from_another_folders_checkpoint_into_a_run_is_refused(tmp_path, tokenizer_dir, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    assert _train(cfg, "max_steps=1", f"output_dir={tmp_path / 'a'}") == 0
    assert _train(cfg, "max_steps=1", f"output_dir={tmp_path / 'b'}") == 0
    capsys.readouterr()
    assert _train(cfg, "max_steps=2", f"output_dir={tmp_path / 'b'}", f"resume={tmp_path / 'a' / 'checkpoint-1'}") == 1
    assert "holds another run" in one_error_line(capsys)


def _nan_gradient_at(step: int, monkeypatch) -> None:
    """From the forward of `step` on, the loss stays finite but its gradient is NaN (d sqrt(x)/dx at 0,
    times 0), so the update, not the loss, makes the weights NaN."""
    real_forward = MultimodalLM.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == step and out.loss_sum is not None:
            weight = next(p for p in self.parameters() if p.requires_grad)
            out.loss_sum = out.loss_sum + 0.0 * torch.sqrt(weight.sum() * 0.0)
        return out

    monkeypatch.setattr(MultimodalLM, "forward", forward)


def test_nan_weights_are_never_saved_and_the_stop_names_a_finite_checkpoint(asr, capsys, monkeypatch):
    cfg, out = asr
    _nan_gradient_at(3, monkeypatch)
    assert _train(cfg, "max_steps=6", "train.save_every=1") == 1
    error = one_error_line(capsys)
    assert "the weights are not finite" in error and f"last good checkpoint: {out / 'checkpoint-2'}" in error
    assert not (out / "checkpoint-3").exists()
    model, _, _ = load_checkpoint(out / "checkpoint-2")
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    monkeypatch.undo()
    assert _train(cfg, "max_steps=6", "train.save_every=1", "resume=auto") == 0  # the named checkpoint resumes


def _flip_a_tensor_byte(path) -> None:
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 5] ^= 0xFF  # inside the first tensor's data: the file still parses
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_an_error_naming_the_file(asr, capsys):
    cfg, out = asr
    assert _train(cfg, "max_steps=1") == 0
    weights = out / "final" / WEIGHTS_FILE
    _flip_a_tensor_byte(weights)
    assert main(["eval", "--checkpoint", str(out / "final"), "--data", str(out.parent / "eval.jsonl")]) == 1
    assert f"{weights} is damaged or was replaced: its SHA-256 differs" in one_error_line(capsys)


def test_a_flipped_byte_in_the_optimizer_state_stops_a_resume(asr, capsys):
    cfg, out = asr
    assert _train(cfg, "max_steps=2", "train.save_every=1") == 0
    _flip_a_tensor_byte(out / "checkpoint-2" / "optimizer.safetensors")
    capsys.readouterr()
    assert _train(cfg, "max_steps=3", "resume=auto") == 1
    assert "optimizer.safetensors is damaged or was replaced" in one_error_line(capsys)


def test_checksums_are_written_for_every_weights_file(asr):
    cfg, out = asr
    assert _train(cfg, "max_steps=1") == 0
    sums = json.loads((out / "checkpoint-1" / CHECKSUMS_FILE).read_text())
    assert sorted(sums) == ["model.safetensors", "optimizer.safetensors", "rng.safetensors"]
    assert sums["model.safetensors"] == checkpoint_module.file_sha256(out / "checkpoint-1" / WEIGHTS_FILE)


def test_weights_are_written_with_the_mode_of_their_siblings(asr):
    cfg, out = asr
    assert _train(cfg, "max_steps=1") == 0
    mode = {name: stat.S_IMODE(os.stat(out / "final" / name).st_mode) for name in (WEIGHTS_FILE, "mmtune_config.json")}
    assert mode[WEIGHTS_FILE] == mode["mmtune_config.json"]


def test_a_kill_between_the_renames_of_a_replace_puts_the_previous_folder_back(asr):
    cfg, out = asr
    assert _train(cfg, "max_steps=2", "train.save_every=1") == 0
    (out / "final").rename(out / ".final.old-99999")  # killed after the old folder was moved aside
    assert _train(cfg, "max_steps=3", "resume=auto") == 0
    assert (out / "final").is_dir() and not list(out.glob(".*.old-*"))


def test_leftovers_of_a_killed_checkpoint_write_are_removed_on_the_next_start(asr):
    cfg, out = asr
    assert _train(cfg, "max_steps=2", "train.save_every=1") == 0
    for name in (".checkpoint-3.tmp-99999", ".checkpoint-1.old-99999"):
        (out / name).mkdir()
        (out / name / WEIGHTS_FILE).write_bytes(b"partial")
    assert _train(cfg, "max_steps=3", "resume=auto") == 0
    assert not list(out.glob(".*.tmp-*")) and not list(out.glob(".*.old-*"))


def test_disk_full_while_saving_stops_naming_what_was_kept(asr, capsys, monkeypatch):
    cfg, out = asr
    real_save = checkpoint_module.save_file
    calls = {"n": 0}

    def save_file(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    assert _train(cfg, "max_steps=3", "train.save_every=1") == 1
    error = one_error_line(capsys)
    assert f"cannot write checkpoint {out / 'checkpoint-2'}: No space left on device" in error
    assert f"last good checkpoint: {out / 'checkpoint-1'}" in error
    assert not list(out.glob(".*.tmp-*"))  # the partial folder went
    load_checkpoint(out / "checkpoint-1")  # and the kept one loads


def test_an_output_dir_that_cannot_be_written_fails_before_any_row_is_encoded(tmp_path, tokenizer_dir, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    (tmp_path / "taken").write_text("a file, not a folder")
    assert _train(cfg, f"output_dir={tmp_path / 'taken' / 'run'}") == 1
    assert "is not writable" in one_error_line(capsys)
    assert not (tmp_path / ".mmtune_index").exists()  # no row was indexed, no model built
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder stops only other users
        (tmp_path / "ro").mkdir(mode=0o555)
        assert _train(cfg, f"output_dir={tmp_path / 'ro' / 'run'}") == 1
        assert "is not writable (Permission denied)" in one_error_line(capsys)


def test_missing_data_is_named_before_the_model_is_built(tmp_path, tokenizer_dir, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    assert _train(cfg, "data.eval=nowhere.jsonl") == 1
    assert "data.eval: nowhere.jsonl does not exist (relative paths resolve against the config file's folder" \
        in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_max_length_over_a_learned_position_table(tmp_path, tokenizer_dir, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    gpt2 = "{model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2, n_positions: 64, vocab_size: 300}"
    assert _train(cfg, f"model.llm.config={gpt2}", "data.max_length=100") == 1
    assert "data.max_length: 100 is over the 64 positions of this LLM's learned position table" in one_error_line(capsys)
    assert not (tmp_path / ".mmtune_index").exists()


def test_a_lora_target_module_that_does_not_exist(tmp_path, tokenizer_dir, capsys):
    cfg = write_asr_run(tmp_path, tokenizer_dir)
    assert _train(cfg, "model.llm.train=lora", "model.lora.target_modules=[qkv_proj]") == 1
    error = one_error_line(capsys)
    assert "model.lora.target_modules: none of qkv_proj is in the llm (its linear layers: " in error
    assert "q_proj" in error


def test_a_vision_feature_layer_out_of_range(tokenizer_dir):
    from mmtune.config import ConfigError
    from mmtune.model.build import build_model
    from tests.tiny import tiny_model_config

    cfg = tiny_model_config(tokenizer_dir, audio=False)
    cfg.vision.feature_layer = 7  # the tiny tower has 3 layers: 4 hidden states
    with pytest.raises(ConfigError, match=r"model.vision.feature_layer: 7 is outside the tower's 4 hidden states "
                                          r"\(-4 .. 3"):
        build_model(cfg)


def test_a_run_config_is_recorded_in_each_checkpoint_for_its_resume(asr):
    cfg, out = asr
    train(load_config(cfg, ["max_steps=1"]))
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["config"]["train"]["lr"] == 1e-3 and state["config"]["data"]["batch_size"] == 4


def test_a_token_budget_below_the_longest_sample(asr, capsys):
    cfg, out = asr
    for batching in ("padded", "packed"):
        assert _train(cfg, "data.max_tokens_per_batch=5", f"data.batching={batching}") == 1
        assert "data.max_tokens_per_batch: 5 is below the longest sample's" in one_error_line(capsys)
    assert not (out / "metrics.jsonl").exists()


def test_a_checkpoint_of_another_versions_optimizer_groups_is_one_error_line(asr, capsys):
    cfg, out = asr
    assert _train(cfg, "max_steps=2", "train.save_every=1") == 0
    state_file = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    groups = state["optimizer"]["param_groups"]
    merged = {**groups[0], "params": [i for g in groups for i in g["params"]]}  # one group, as older versions had
    state["optimizer"]["param_groups"], state["config"] = [merged], None
    state_file.write_text(json.dumps(state))
    sums = json.loads((out / "checkpoint-2" / CHECKSUMS_FILE).read_text())  # (trainer_state.json is not summed)
    assert "trainer_state.json" not in sums
    capsys.readouterr()
    assert _train(cfg, "max_steps=3", "resume=auto") == 1
    error = one_error_line(capsys)
    assert "the optimizer state does not fit this run's parameter groups" in error and "model.init_from=" in error
