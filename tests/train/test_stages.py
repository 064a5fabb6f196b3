"""Several configs as stages of one job: which overrides reach which stage, and what is refused
before any stage trains (the two-stage run itself: test_examples.py's stage hand-over)."""

from pathlib import Path

import pytest

from mmtune.config import ConfigError
from mmtune.train.stages import load_stages, stage_overrides

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STAGE1 = str(EXAMPLES / "vision_digits" / "stage1.yaml")
STAGE2 = str(EXAMPLES / "vision_digits" / "stage2.yaml")


def test_plain_overrides_reach_every_stage_and_numbered_ones_their_own():
    assert stage_overrides(["seed=3", "2:train.lr=1e-4", "1:max_steps=5", "data.batch_size=4"], 2) == [
        ["seed=3", "max_steps=5", "data.batch_size=4"],
        ["seed=3", "train.lr=1e-4", "data.batch_size=4"],
    ]


@pytest.mark.parametrize("item", ["0:seed=1", "3:seed=1"])
def test_a_stage_number_that_is_not_there_is_refused(item):
    with pytest.raises(ConfigError, match="there is no stage"):
        stage_overrides([item], 2)


def test_a_later_stage_starts_from_the_previous_final(tmp_path):
    first, second = load_stages([STAGE1, STAGE2], [f"1:output_dir={tmp_path / 'a'}", f"2:output_dir={tmp_path / 'b'}"])
    assert first.model.init_from is None
    assert Path(second.model.init_from) == (tmp_path / "a" / "final").resolve()  # not the file's own init_from
    assert second.train.seed == first.train.seed


def test_two_stages_writing_one_folder_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"stages 1 and 2 .* both write train.output_dir"):
        load_stages([STAGE1, STAGE1], [f"output_dir={tmp_path / 'same'}"])


def test_a_typo_in_a_later_stage_is_found_before_the_first_trains(tmp_path):
    with pytest.raises(ConfigError, match="lrr"):
        load_stages([STAGE1, STAGE2], [f"1:output_dir={tmp_path / 'a'}", "2:train.lrr=1e-4"])
