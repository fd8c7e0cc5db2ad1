"""wmbook.plotting: each function draws the figure it promises, from the data it is given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from wmbook import plotting  # noqa: E402
from wmbook.agents.dyna import ModelCheck  # noqa: E402
from wmbook.models import evaluate_dynamics  # noqa: E402
from wmbook.models.training import TrainHistory  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def evaluation(trained_model, cartpole_data):
    model, _ = trained_model
    return evaluate_dynamics(model, cartpole_data[1])


def test_learning_curves_one_log_panel_per_component_with_the_best_epoch_marked():
    history = TrainHistory()
    for epoch, value in enumerate([1.0, 0.5, 0.3, 0.4]):
        for split in (history.train, history.val):
            for key in split:
                split[key].append(value * (1.1 if split is history.val else 1.0))
    history.best_epoch = 2
    fig = plotting.plot_learning_curves(history)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["total", "next state", "reward", "done"]
    for ax in axes:
        assert ax.get_yscale() == "log"
        train, val, best = ax.lines
        np.testing.assert_allclose(train.get_ydata(), [1.0, 0.5, 0.3, 0.4])
        np.testing.assert_allclose(val.get_ydata(), [1.1, 0.55, 0.33, 0.44])
        assert list(best.get_xdata()) == [3, 3]  # epochs counted from 1


def test_predicted_vs_true_panels_per_dimension(evaluation):
    fig = plotting.plot_predicted_vs_true(evaluation, max_points=100)
    assert len(fig.axes) == 8
    top = fig.axes[:4]
    assert [ax.get_title() for ax in top] == list(plotting.CARTPOLE_STATE_LABELS)
    assert len(top[0].collections[0].get_offsets()) == 100  # at most max_points points
    bottom_titles = [ax.get_title() for ax in fig.axes[4:]]
    assert bottom_titles == [f"MSE {m:.1e}" for m in evaluation.next_state_mse_per_dim]


def test_done_calibration_bins_and_counts(evaluation):
    fig = plotting.plot_done_calibration(evaluation, n_bins=10)
    left, right = fig.axes
    counts = [int(t.get_text()) for t in left.texts]
    assert sum(counts) == evaluation.n  # every transition lands in one labelled bin
    assert left.get_legend() is not None and right.get_yscale() == "log"


def test_next_state_bars_show_true_and_predicted_changes():
    obs = np.array([0.0, 0.1, 0.02, -0.1])
    fig = plotting.plot_next_state(obs, obs + [0.01, 0.2, -0.01, 0.3], obs + [0.01, 0.1, 0.0, 0.3],
                                   0.25, False, title="t")
    ax = fig.axes[0]
    heights = [round(p.get_height(), 6) for p in ax.patches]
    assert heights == [0.01, 0.2, -0.01, 0.3, 0.01, 0.1, 0.0, 0.3]
    assert "P(terminated) = 0.250, truth: continues" in ax.get_title()


def test_error_by_step_median_and_band_ignore_unreached_steps():
    errors = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan], [5.0, 6.0, 7.0]])
    ax = plotting.plot_error_by_step(errors, label="m")
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_ydata(), [3.0, 4.0, 7.0])
    assert line.get_label() == "m (median)" and ax.get_yscale() == "log"


def test_trajectories_one_row_per_start_real_first():
    real = np.zeros((3, 11, 4))
    imagined = {"a": np.ones((3, 11, 4)), "b": np.full((3, 11, 4), 2.0)}
    fig = plotting.plot_trajectories(real, imagined, [0, 2], horizon=5)
    axes = [ax for ax in fig.axes if ax.lines]
    assert len(axes) == 8
    first = axes[0]
    assert [line.get_label() for line in first.lines] == ["real", "a", "b"]
    assert len(first.lines[0].get_xdata()) == 6  # horizon + 1 states


def test_valid_horizons_line_per_model_and_the_tolerance_used():
    ax = plotting.plot_valid_horizons(np.array([0.01, 0.1]), {"a": np.array([3, 9]), "b": np.array([4, 12])}, 0.05)
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["a", "b", "tolerance used (0.05)"] and ax.get_xscale() == "log"


def test_disagreement_scatter_drops_unusable_points_and_names_rho():
    d = np.array([0.1, 0.2, 0.0, 0.4])
    e = np.array([0.2, np.nan, 0.3, 0.5])
    fig = plotting.plot_disagreement_vs_error(d, e, rho=0.75)
    ax = fig.axes[0]
    assert len(ax.collections[0].get_offsets()) == 2 and ax.get_title() == "Spearman rank correlation 0.75"


def test_state_coverage_one_cloud_per_data_set():
    fig = plotting.plot_state_coverage({"a": np.zeros((10, 4)), "b": np.ones((5000, 4))}, max_points=100)
    ax = fig.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [10, 100]


def test_model_checks_median_over_seeds_per_refit():
    def checks(values):
        return [ModelCheck(step, 100, 10, v, 10 * v, 5, False) for step, v in zip((1000, 1250, 1500), values)]

    fig = plotting.plot_model_checks({"single": [checks([1.0, 0.5, 0.25]), checks([3.0, 1.5, 0.75])],
                                      "ensemble": [checks([2.0, 1.0, 0.5])]}, horizon=5)
    one, many = fig.axes
    assert one.get_title() == "one step ahead" and many.get_title() == "5 steps ahead, open loop"
    single, ensemble = one.lines
    np.testing.assert_allclose(single.get_xdata(), [1000, 1250, 1500])
    np.testing.assert_allclose(single.get_ydata(), [2.0, 1.0, 0.5])
    np.testing.assert_allclose(many.lines[0].get_ydata(), [20.0, 10.0, 5.0])
    assert ensemble.get_label() == "ensemble" and one.get_yscale() == "log"
