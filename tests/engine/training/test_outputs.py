"""A run's outputs: the curves PNG is drawn where matplotlib is installed and skipped where it is not."""

import sys

from loratk.engine.training.outputs import plot_curves

HISTORY = [{"step": 1, "loss": 2.0, "learning_rate": 1e-3}, {"step": 2, "loss": 1.5, "learning_rate": 1e-3}]


def test_curves_are_drawn(tmp_path):
    assert plot_curves(HISTORY, tmp_path / "curves.png") == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_without_matplotlib_the_curves_are_skipped_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert plot_curves(HISTORY, tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
