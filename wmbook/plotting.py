"""The book's figure style and its standard plots.

Every function draws on a new figure and returns it; notebooks show it with ``plt.show()``.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve

CARTPOLE_STATE_NAMES = ("x", "x_dot", "theta", "theta_dot")
CARTPOLE_STATE_LABELS = (r"cart position $x$", r"cart velocity $\dot x$",
                         r"pole angle $\theta$", r"pole angular velocity $\dot\theta$")
BOOK_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "real": "#222222", "model": "#d62728",
               "ideal": "#888888"}


def use_book_style() -> None:
    """Matplotlib settings shared by every chapter (PNG-friendly sizes, light grid)."""
    plt.rcParams.update({
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "figure.figsize": (7.5, 4.0),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "legend.frameon": False,
    })


def plot_learning_curves(history, components: Sequence[str] = ("total", "next_state", "reward", "done")):
    """Training and validation loss per epoch, one panel per loss component (log scale)."""
    fig, axes = plt.subplots(1, len(components), figsize=(3.2 * len(components), 3.2), sharex=True)
    epochs = np.arange(1, history.epochs + 1)
    for ax, key in zip(np.atleast_1d(axes), components):
        ax.plot(epochs, history.train[key], color=BOOK_COLORS["train"], label="train")
        ax.plot(epochs, history.val[key], color=BOOK_COLORS["val"], label="validation")
        ax.axvline(history.best_epoch + 1, color=BOOK_COLORS["ideal"], ls=":", lw=1, label="best epoch")
        ax.set_yscale("log")
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("epoch")
    np.atleast_1d(axes)[0].set_ylabel("loss (normalised units)")
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    return fig


def plot_predicted_vs_true(evaluation, labels: Sequence[str] = CARTPOLE_STATE_LABELS, max_points: int = 3000):
    """Top row: predicted against true next state per dimension. Bottom row: the distribution
    of the prediction error, in units of the spread of the one-step change."""
    true_next, pred_next = evaluation.true_next_obs, evaluation.predicted_next_obs
    change_std = (true_next - evaluation.obs).std(0)
    shown = slice(0, min(max_points, len(true_next)))
    dims = true_next.shape[1]
    fig, axes = plt.subplots(2, dims, figsize=(3.0 * dims, 5.6))
    for d in range(dims):
        top, bottom = axes[0, d], axes[1, d]
        t, p = true_next[shown, d], pred_next[shown, d]
        low, high = min(t.min(), p.min()), max(t.max(), p.max())
        top.plot([low, high], [low, high], color=BOOK_COLORS["ideal"], lw=1)
        top.scatter(t, p, s=3, alpha=0.4, color=BOOK_COLORS["model"], rasterized=True)
        top.set_title(labels[d])
        top.set_xlabel("true next state")
        error = (pred_next[:, d] - true_next[:, d]) / change_std[d]
        bottom.hist(error, bins=60, color=BOOK_COLORS["model"], alpha=0.8)
        bottom.set_yscale("log")
        bottom.set_xlabel("error / std of one-step change")
        bottom.set_title(f"MSE {evaluation.next_state_mse_per_dim[d]:.1e}")
    axes[0, 0].set_ylabel("predicted next state")
    axes[1, 0].set_ylabel("held-out transitions")
    fig.tight_layout()
    return fig


def plot_done_calibration(evaluation, n_bins: int = 10):
    """Reliability diagram of the done head (equal-width bins; marker area grows with the
    number of transitions in a bin), and the spread of its predicted probabilities."""
    prob, truth = evaluation.done_prob, evaluation.done_true
    frac_true, mean_pred = calibration_curve(truth, prob, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], prob), minlength=n_bins)  # sklearn's binning
    counts = counts[counts > 0]  # calibration_curve drops empty bins the same way
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    left.plot([0, 1], [0, 1], color=BOOK_COLORS["ideal"], lw=1, label="perfect calibration")
    left.plot(mean_pred, frac_true, "-", color=BOOK_COLORS["model"], lw=1)
    left.scatter(mean_pred, frac_true, s=12 + 12 * np.log10(counts), color=BOOK_COLORS["model"],
                 label="done head (area ~ log count)", zorder=3)
    for x, y, n in zip(mean_pred, frac_true, counts):
        left.annotate(f"{n}", (x, y), textcoords="offset points", xytext=(4, -11), fontsize=7)
    left.set_xlabel("predicted P(terminated)")
    left.set_ylabel("observed fraction terminated")
    left.set_title(f"calibration ({n_bins} equal-width bins, count per bin)")
    left.legend(loc="upper left")
    bins = np.linspace(0, 1, 26)
    right.hist(prob[truth == 0], bins=bins, color=BOOK_COLORS["train"], alpha=0.7, label="not terminated")
    right.hist(prob[truth == 1], bins=bins, color=BOOK_COLORS["model"], alpha=0.7, label="terminated")
    right.set_yscale("log")
    right.set_xlabel("predicted P(terminated)")
    right.set_ylabel("transitions")
    right.set_title("predicted probabilities by true outcome")
    right.legend()
    fig.tight_layout()
    return fig


def plot_next_state(obs: np.ndarray, true_next: np.ndarray, predicted_next: np.ndarray,
                    done_prob: float, terminated: bool, labels: Sequence[str] = CARTPOLE_STATE_LABELS,
                    title: str = ""):
    """One transition: true against predicted change of each state dimension."""
    dims = len(obs)
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    x = np.arange(dims)
    ax.bar(x - 0.2, true_next - obs, 0.4, color=BOOK_COLORS["real"], label="true change")
    ax.bar(x + 0.2, predicted_next - obs, 0.4, color=BOOK_COLORS["model"], label="predicted change")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, labels)
    ax.set_ylabel(r"$s'_i - s_i$")
    outcome = "terminated" if terminated else "continues"
    ax.set_title(f"{title}  |  P(terminated) = {done_prob:.3f}, truth: {outcome}")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_error_by_step(errors: np.ndarray, label: str = "model", ax=None, quantiles=(0.25, 0.75)):
    """Median (line) and inter-quantile band of a ``(B, H)`` per-step error (NaN = not reached)."""
    if ax is None:
        _, ax = plt.subplots()
    steps = np.arange(1, errors.shape[1] + 1)
    reached = np.isfinite(errors).sum(0) > 0
    median = np.full(errors.shape[1], np.nan)
    low, high = median.copy(), median.copy()
    median[reached] = np.nanmedian(errors[:, reached], 0)
    low[reached], high[reached] = np.nanquantile(errors[:, reached], quantiles, axis=0)
    line, = ax.plot(steps, median, label=f"{label} (median)")
    ax.fill_between(steps, low, high, alpha=0.25, color=line.get_color(),
                    label=f"{label} ({int(quantiles[0] * 100)}-{int(quantiles[1] * 100)}th pct.)")
    ax.set_yscale("log")
    ax.set_xlabel("imagined steps")
    ax.set_ylabel("state error (state std units)")
    return ax


def plot_trajectories(real_states: np.ndarray, imagined: dict[str, np.ndarray], starts: Sequence[int],
                      horizon: int, labels: Sequence[str] = CARTPOLE_STATE_LABELS):
    """Real against imagined trajectories: one row per start, one column per state variable.

    ``real_states`` is ``(B, H + 1, obs_dim)``; ``imagined`` maps a model's name to states of the
    same shape. Only the first ``horizon`` steps are drawn.
    """
    dims = real_states.shape[-1]
    fig, axes = plt.subplots(len(starts), dims, figsize=(3.0 * dims, 2.2 * len(starts)),
                             sharex=True, squeeze=False)
    steps = np.arange(horizon + 1)
    for row, start in enumerate(starts):
        for d in range(dims):
            ax = axes[row, d]
            ax.plot(steps, real_states[start, :horizon + 1, d], color=BOOK_COLORS["real"], lw=2, label="real")
            for name, states in imagined.items():
                ax.plot(steps, states[start, :horizon + 1, d], lw=1.3, label=name)
            if row == 0:
                ax.set_title(labels[d])
            if row == len(starts) - 1:
                ax.set_xlabel("step")
        axes[row, 0].set_ylabel(f"start {start}")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.9 / (2.2 * len(starts)), 1, 1))  # room for the legend
    return fig


def plot_valid_horizons(tolerances: np.ndarray, medians: dict[str, np.ndarray], chosen: float, ax=None):
    """Median valid horizon against the tolerance that defines it, one line per model."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.6))
    for name, values in medians.items():
        ax.plot(tolerances, values, "o-", ms=3, label=name)
    ax.axvline(chosen, color=BOOK_COLORS["ideal"], ls=":", lw=1, label=f"tolerance used ({chosen})")
    ax.set_xscale("log")
    ax.set_xlabel("tolerance (RMS error, state std units)")
    ax.set_ylabel("median valid horizon (steps)")
    ax.legend()
    return ax


def plot_disagreement_vs_error(disagreement: np.ndarray, error: np.ndarray, rho: float, max_points: int = 5000):
    """Ensemble disagreement against the true error at the same imagined step (log-log)."""
    keep = np.isfinite(error) & (error > 0) & (disagreement > 0)
    d, e = disagreement[keep], error[keep]
    if len(d) > max_points:
        picked = np.random.default_rng(0).choice(len(d), max_points, replace=False)
        d, e = d[picked], e[picked]
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.scatter(d, e, s=3, alpha=0.3, color=BOOK_COLORS["model"], rasterized=True)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ensemble disagreement")
    ax.set_ylabel("true error of the ensemble mean")
    ax.set_title(f"Spearman rank correlation {rho:.2f}")
    fig.tight_layout()
    return fig


def plot_state_coverage(datasets: dict[str, np.ndarray], dims=(0, 2), labels: Sequence[str] = CARTPOLE_STATE_LABELS,
                        max_points: int = 4000):
    """Where each data set's states lie, in two chosen state variables."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    rng = np.random.default_rng(0)
    for name, states in datasets.items():
        shown = states if len(states) <= max_points else states[rng.choice(len(states), max_points, replace=False)]
        ax.scatter(shown[:, dims[0]], shown[:, dims[1]], s=3, alpha=0.35, label=name, rasterized=True)
    ax.set_xlabel(labels[dims[0]])
    ax.set_ylabel(labels[dims[1]])
    ax.legend(markerscale=4)
    fig.tight_layout()
    return fig


def plot_model_checks(checks: dict[str, Sequence[Sequence]], horizon: int = 5):
    """A Dyna model's held-out error over training: one-step (left) and ``horizon``-step (right)
    next-state error against the real steps at each refit, log scale.

    ``checks`` maps a method's name to one list per seed of
    :class:`~wmbook.agents.dyna.ModelCheck` (one per refit, the same refit steps for every
    seed); the line is the median over seeds, the band spans the lowest to the highest.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 3.8), sharex=True)
    for color, (name, runs) in enumerate(checks.items()):
        steps = np.array([check.step for check in runs[0]])
        for ax, field in zip(axes, ("one_step", "multi_step")):
            values = np.array([[getattr(check, field) for check in run] for run in runs])
            ax.plot(steps, np.nanmedian(values, 0), "o-", ms=3, color=f"C{color}", label=name)
            ax.fill_between(steps, np.nanmin(values, 0), np.nanmax(values, 0), alpha=0.15,
                            color=f"C{color}")
    for ax, title in zip(axes, ("one step ahead", f"{horizon} steps ahead, open loop")):
        ax.set_yscale("log")
        ax.set_xlabel("real environment steps (refits)")
        ax.set_title(title)
    axes[0].set_ylabel("held-out next-state MSE\n(change std units)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
