import pytest
from PIL import Image

from tests.train.fake_run import fake_records, png_size
from mmtune.train.curves import plot_curves, smooth


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return fake_records(tmp_path_factory.mktemp("run"))


def test_plot_is_a_sensible_png(tmp_path, records):
    path = plot_curves(records, tmp_path / "sub" / "curves.png")
    width, height = png_size(path)
    assert 600 <= width <= 2000 and 400 <= height <= 2000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == (width, height)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 50  # drawn, not a blank canvas


def test_plot_without_eval_or_lr_or_anything(tmp_path):
    loss_only = plot_curves([{"step": s, "loss": 1.0 / s} for s in range(1, 5)], tmp_path / "a.png")
    empty = plot_curves([], tmp_path / "b.png")
    assert png_size(loss_only)[1] < png_size(plot_curves([{"step": 1, "loss": 1.0, "lr": 1e-4, "eval_loss": 1.0}],
                                                         tmp_path / "c.png"))[1]
    assert png_size(empty)[0] > 0


def test_smooth_is_centered_and_keeps_the_ends():
    assert smooth([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.0, 2.0, 3.0, 4.0, 5.0]  # a line stays a line: no lag
    assert smooth([0.0, 3.0, 0.0, 3.0, 0.0], 3) == [0.0, 1.0, 2.0, 1.0, 0.0]
