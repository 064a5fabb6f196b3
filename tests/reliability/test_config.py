"""Every bad setting ends in one `error:` line naming the key, before any model is built or row read."""

import pytest

from mmtune.cli import main
from tests.reliability.helpers import one_error_line
from tests.tiny import write_asr_run


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, tokenizer_dir):
    return write_asr_run(tmp_path_factory.mktemp("cfg"), tokenizer_dir)


BAD_SETTINGS = [
    ("lr=-1e-4", "train.lr: must be > 0, got -0.0001"),
    ("lr=0", "train.lr: must be > 0, got 0"),
    ("train.warmup_steps=-5", "train.warmup_steps: must be >= 0, got -5"),
    ("train.log_every=0", "train.log_every: must be >= 1, got 0"),
    ("train.keep_last=0", "train.keep_last: must be >= 1, got 0"),
    ("train.keep_last=-1", "train.keep_last: must be >= 1, got -1"),
    ("train.cpu_threads=-1", "train.cpu_threads: must be >= 1, got -1"),
    ("train.save_every=-2", "train.save_every: must be >= 0, got -2"),
    ("train.max_grad_norm=-1", "train.max_grad_norm: must be >= 0, got -1"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be >= 0, got -0.1"),
    ("eval.metrics=[bleu]", "eval.metrics: ['bleu']: choose from loss, wer, cer, accuracy"),
    ("eval.metrics=[]", "eval.metrics: []: choose from loss, wer, cer, accuracy"),
    ("eval.batch_size=0", "eval.batch_size: must be >= 1, got 0"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens: must be >= 1, got 0"),
    ("eval.max_samples=0", "eval.max_samples: must be >= 1, got 0"),
    ("data.max_tokens_per_batch=0", "data.max_tokens_per_batch: must be >= 1, got 0"),
    ("data.max_length=0", "data.max_length: must be >= 1, got 0"),
    ("data.augment.speed=[0]", "data.augment.speed: [0]: give speed factors between 0.5 and 2.0"),
    ("data.augment.num_masks=-1", "data.augment.num_masks: must be >= 0, got -1"),
    ("data.special_tokens=allow", "data.special_tokens: 'allow' is not one of error, text"),
    ("model.lora.alpha=0", "model.lora.alpha: must be > 0, got 0"),
    ("model.lora.dropout=1.5", "model.lora.dropout: 1.5 is not a probability in [0, 1)"),
    ("model.lora.target_modules=[]", "model.lora.target_modules: []: give all-linear or a list of module names"),
    ("train.learning_rate=1e-3", "unknown key 'train.learning_rate' (did you mean train.lr?)"),
    ("train.num_train_epochs=3", "unknown key 'train.num_train_epochs' (did you mean train.epochs?)"),
    ("train.gradient_accumulation_steps=4", "did you mean train.grad_accum?"),
    ("train.per_device_train_batch_size=4", "did you mean batch_size (in data)?"),
    ("lr=[1", "override 'lr=[1': not valid YAML at line 1, column 3"),
    ("model.llm.tokenizer=/nowhere/tokenizer", "model.llm.tokenizer: /nowhere/tokenizer does not exist (relative "
                                               "paths resolve against the config file's folder"),
    ("model.llm.tokenizer=../nowhere", "model.llm.tokenizer: ../nowhere does not exist"),
    ("model.init_from=stage1/final", "model.init_from: checkpoint folder stage1/final does not exist: pass a "
                                     "folder written by `mmtune train`"),
]


@pytest.mark.parametrize("override,message", BAD_SETTINGS, ids=[s[0] for s in BAD_SETTINGS])
def test_a_bad_setting_is_one_error_line_naming_the_key(cfg, capsys, override, message):
    assert main(["train", cfg, override]) == 1
    assert message in one_error_line(capsys)


def test_overwrite_with_resume_is_refused(cfg, capsys):
    assert main(["train", cfg, "train.overwrite=true", "resume=auto"]) == 1
    assert "overwrite and resume are both set" in one_error_line(capsys)


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-4\n  max_steps: [2\n")
    assert main(["train", str(bad)]) == 1
    error = one_error_line(capsys)
    assert f"{bad}: not valid YAML at line 4, column 1" in error


def test_a_config_path_that_is_a_folder(tmp_path, capsys):
    assert main(["train", str(tmp_path)]) == 1
    assert "is a folder: give the YAML file in it" in one_error_line(capsys)


def test_a_config_file_that_is_not_text(tmp_path, capsys):
    bad = tmp_path / "weights.yaml"
    bad.write_bytes(b"\xff\xfe\x00\x81" * 8)
    assert main(["train", str(bad)]) == 1
    assert f"config file {bad} cannot be read (UnicodeDecodeError" in one_error_line(capsys)


def test_errors_come_before_the_model_is_built(cfg, capsys, monkeypatch):
    """Every case above but init_from (checked first thing when the model is built) fails in load_config:
    nothing is built, nothing is indexed."""
    import mmtune.train.loop as loop

    def never(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(loop, "start_model", never)
    for override, message in BAD_SETTINGS:
        if not override.startswith("model.init_from"):
            assert main(["train", cfg, override]) == 1
            assert message in one_error_line(capsys)
