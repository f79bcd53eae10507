"""Figures for a trained posterior: pairplot of its samples, coverage curves, SBC rank histograms.

matplotlib is the only plotting dependency (``pip install 'smcwake[plot]'``); it is imported on
first use, so ``import smcwake`` works without it. Every function accepts torch tensors or
numpy arrays and returns the matplotlib ``Figure`` it drew on. Figures are made with pyplot, so
they show in notebooks and with ``plt.show()``; in a script, ``fig.savefig(path)`` then
``plt.close(fig)``. Each function can also draw into a figure or axes you pass (``fig=`` or
``ax=``), which is how :meth:`smcwake.calibration.CalibrationResult.plot` composes them.

- :func:`pairplot`: corner-style grid of one observation's posterior samples, 1-D marginals on
  the diagonal and 2-D marginals below, optionally against reference samples and the true value;
- :func:`coverage`: expected-coverage curves against the diagonal, with the band inside which a
  calibrated posterior's curve stays;
- :func:`sbc_ranks`: simulation-based calibration rank histograms with the band a calibrated
  posterior's counts fall in.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from smcwake import calibration_metrics
from smcwake._optional import require

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = ["MAX_DIMS", "coverage", "pairplot", "sbc_ranks"]

MAX_DIMS = 10
"""Dimensions drawn by default; pass ``dims=`` to choose others (a grid grows as d^2)."""

_SAMPLES_COLOR = "C0"
_REFERENCE_COLOR = "0.35"
_TRUTH_COLOR = "C3"
_BAND_COLOR = "0.85"


def _pyplot(purpose: str):
    return require("matplotlib.pyplot", purpose)


def _root(fig: Any) -> Figure:
    """The top-level Figure of a Figure or SubFigure."""
    while getattr(fig, "figure", None) not in (None, fig):
        fig = fig.figure
    return fig


def _as_array(name: str, value: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor, an array or a nested list."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name}: expected a torch.Tensor or an array of numbers, received "
            f"{type(value).__name__}"
        ) from err


def _draws(name: str, value: Any, d: int | None = None) -> np.ndarray:
    """Samples of one observation as [S, d]; non-finite rows are dropped with a warning."""
    a = _as_array(name, value)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        hint = " (one observation's draws: pass samples[i])" if a.ndim == 3 else ""
        raise ValueError(
            f"{name}: expected shape [S, d] with S, d >= 1{hint}, received {list(a.shape)}"
        )
    if d is not None and a.shape[1] != d:
        raise ValueError(
            f"{name}: expected shape [S, {d}] to match samples, received {list(a.shape)}"
        )
    finite = np.isfinite(a).all(1)
    if not finite.all():
        warnings.warn(
            f"{name}: dropped {int((~finite).sum())} of {a.shape[0]} draws with NaN or inf",
            stacklevel=3,
        )
        a = a[finite]
        if a.shape[0] == 0:
            raise ValueError(f"{name}: no finite draws to plot")
    return a


def _choose_dims(d: int, dims: Sequence[int] | None) -> list[int]:
    if dims is None:
        if d > MAX_DIMS:
            warnings.warn(
                f"drawing the first {MAX_DIMS} of {d} dimensions; pass dims=[...] to choose",
                stacklevel=3,
            )
        return list(range(min(d, MAX_DIMS)))
    chosen = [int(j) for j in dims]
    if not chosen or any(not 0 <= j < d for j in chosen):
        raise ValueError(f"dims: expected indices in [0, {d}), received {list(dims)}")
    return chosen


def _labels(labels: Sequence[str] | None, d: int) -> list[str]:
    if labels is None:
        return [f"z[{j}]" for j in range(d)]
    if isinstance(labels, str) or len(labels) != d:
        raise ValueError(f"labels: expected {d} names (one per dimension), received {labels!r}")
    return [str(label) for label in labels]


def _limits(columns: Sequence[np.ndarray], truth: float | None) -> tuple[float, float]:
    """Axis limits holding the central 99% of every sample set and the truth, plus a margin."""
    low = min(float(np.quantile(c, 0.005)) for c in columns)
    high = max(float(np.quantile(c, 0.995)) for c in columns)
    if truth is not None and math.isfinite(truth):
        low, high = min(low, truth), max(high, truth)
    pad = 0.05 * (high - low) if high > low else 0.5 * max(1.0, abs(low))
    return low - pad, high + pad


def _smoothed_histogram(
    x: np.ndarray, y: np.ndarray, xlim: tuple[float, float], ylim: tuple[float, float], bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D histogram smoothed by a Gaussian of one bin's width: (centres x, centres y, H[y, x])."""
    hist, xedges, yedges = np.histogram2d(x, y, bins=bins, range=[xlim, ylim])
    offsets = np.arange(-3, 4)
    kernel = np.exp(-0.5 * offsets**2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        hist = np.apply_along_axis(np.convolve, axis, hist, kernel, mode="same")
    centres = (0.5 * (xedges[1:] + xedges[:-1]), 0.5 * (yedges[1:] + yedges[:-1]))
    return centres[0], centres[1], hist.T


def _mass_levels(hist: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Density thresholds whose super-level sets hold the given fractions of the histogram."""
    values = np.sort(hist.ravel())[::-1]
    cumulative = np.cumsum(values) / values.sum()
    levels = [float(values[min(np.searchsorted(cumulative, m), values.size - 1)]) for m in masses]
    return sorted(set(levels))


def _draw_pair(ax: Axes, x, y, xlim, ylim, *, kind: str, color: str, bins: int) -> None:
    if kind == "scatter":
        alpha = float(min(0.6, max(0.03, 300.0 / x.shape[0])))
        ax.scatter(x, y, s=2, color=color, alpha=alpha, linewidths=0, rasterized=True)
        return
    cx, cy, hist = _smoothed_histogram(x, y, xlim, ylim, bins)
    if hist.sum() <= 0:
        return
    levels = _mass_levels(hist, (0.9, 0.5))  # lines around 50% and 90% of the mass
    if len(levels) > 0 and levels[-1] > 0:
        ax.contour(cx, cy, hist, levels=[lv for lv in levels if lv > 0], colors=color)


_DrawSet = tuple[np.ndarray, str, str]  # draws [n, d], color, legend label


def _marginal_panel(
    ax: Axes, sets: Sequence[_DrawSet], i: int, edges: np.ndarray, truth: float | None
) -> None:
    """A diagonal panel of :func:`pairplot`: coordinate i's histograms (as densities).

    The first set is filled when there is more than one (the reference, drawn underneath).
    """
    for number, (draws, color, name) in enumerate(sets):
        filled = number == 0 and len(sets) > 1
        ax.hist(
            draws[:, i],
            bins=edges,
            density=True,
            histtype="stepfilled" if filled else "step",
            color=color,
            alpha=0.35 if filled else 1.0,
            lw=1.5,
            label=name,
        )
    if truth is not None:
        ax.axvline(truth, color=_TRUTH_COLOR, lw=1.2, label="truth")
    ax.set_yticks([])


def _pair_panel(
    ax: Axes,
    sets: Sequence[_DrawSet],
    xy: tuple[int, int],
    limits: tuple[tuple[float, float], tuple[float, float]],
    truth: tuple[float, float] | None,
    *,
    kind: str,
    bins: int,
) -> None:
    """A panel below the diagonal of :func:`pairplot`: coordinate ``xy[1]`` against ``xy[0]``."""
    j, i = xy
    for draws, color, _ in sets:
        _draw_pair(ax, draws[:, j], draws[:, i], *limits, kind=kind, color=color, bins=bins)
    if truth is not None:
        ax.axvline(truth[0], color=_TRUTH_COLOR, lw=0.8, alpha=0.6)
        ax.axhline(truth[1], color=_TRUTH_COLOR, lw=0.8, alpha=0.6)
        ax.plot(*truth, "o", color=_TRUTH_COLOR, ms=4)
    ax.set_ylim(limits[1])


def _pairplot_legend(axes: np.ndarray) -> None:
    """The legend of :func:`pairplot`, in its empty top-right panel (or the only panel).

    Shapes: axes [k, k] of matplotlib Axes.
    """
    k = axes.shape[0]
    handles, legend_labels = axes[0, 0].get_legend_handles_labels()
    if len(handles) <= 1:
        return
    if k > 1:
        corner = axes[0, k - 1]
        corner.set_visible(True)
        corner.axis("off")
        corner.legend(handles, legend_labels, loc="upper right", frameon=False)
    else:
        axes[0, 0].legend(frameon=False, fontsize="small")


def pairplot(
    samples: Any,
    reference: Any = None,
    labels: Sequence[str] | None = None,
    truth: Any = None,
    *,
    dims: Sequence[int] | None = None,
    kind: str = "scatter",
    bins: int = 40,
    sample_label: str = "posterior",
    reference_label: str = "reference",
    fig: Figure | SubFigure | None = None,
) -> Figure:
    """Corner-style grid of one observation's posterior: 1-D marginals, and 2-D marginals below.

    The diagonal shows each coordinate's histogram (a density), the panels below it each pair
    of coordinates. ``reference`` samples (e.g. a long SMC run or an exact posterior) are drawn
    in grey under the posterior's, and ``truth`` (the parameter that generated the observation)
    as red lines and points. Axis limits hold the central 99% of every sample set and the truth.

    Args:
        samples: the posterior's draws for one observation, e.g. ``posterior.sample(x[i:i+1],
            1000)[0]``.
        reference: draws from a reference posterior for the same observation (any number).
        labels: one name per dimension (default ``z[0]``, ``z[1]``, ...).
        truth: the true parameter.
        dims: the coordinates to draw (default: all, at most :data:`MAX_DIMS`).
        kind: ``"scatter"`` (points; any number of draws) or ``"contour"`` (lines around 50%
            and 90% of the mass of a smoothed 2-D histogram; for thousands of draws).
        bins: histogram bins per axis.
        sample_label, reference_label: legend entries.
        fig: a matplotlib Figure or SubFigure to draw into (default: a new pyplot figure).

    Shapes: samples [S, d] (or [1, S, d], or [S] when d = 1), reference [R, d], truth [d]
    -> Figure.

    >>> import matplotlib.pyplot as plt
    >>> g = torch.Generator().manual_seed(0)
    >>> fig = pairplot(torch.randn(500, 3, generator=g), truth=torch.zeros(3),
    ...                labels=["a", "b", "c"])
    >>> [ax.get_xlabel() for ax in fig.axes[-3:]]  # the bottom row
    ['a', 'b', 'c']
    >>> plt.close(fig)
    """
    if kind not in ("scatter", "contour"):
        raise ValueError(f"kind: expected 'scatter' or 'contour', received {kind!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins: expected an integer >= 2, received {bins!r}")
    plt = _pyplot("smcwake.plot.pairplot")
    q = _draws("samples", samples)
    d = q.shape[1]
    ref = _draws("reference", reference, d) if reference is not None else None
    true = None
    if truth is not None:
        true = _as_array("truth", truth).reshape(-1)
        if true.shape != (d,):
            raise ValueError(f"truth: expected shape [{d}], received {list(true.shape)}")
    chosen = _choose_dims(d, dims)
    names = _labels(labels, d)
    k = len(chosen)
    if fig is None:
        size = max(3.5, 2.2 * k)
        fig = plt.figure(figsize=(size, size), layout="constrained")
    axes = np.asarray(fig.subplots(k, k, squeeze=False))
    sets = [(ref, _REFERENCE_COLOR, reference_label)] if ref is not None else []
    sets.append((q, _SAMPLES_COLOR, sample_label))
    limits = [
        _limits([s[:, j] for s, _, _ in sets], None if true is None else float(true[j]))
        for j in chosen
    ]
    for row, i in enumerate(chosen):
        for col, j in enumerate(chosen):
            ax = axes[row, col]
            if col > row:
                ax.set_visible(False)
                continue
            if col == row:
                edges = np.linspace(*limits[row], bins + 1)
                _marginal_panel(ax, sets, i, edges, None if true is None else true[i])
            else:
                xy = (j, i)
                point = None if true is None else (true[j], true[i])
                _pair_panel(ax, sets, xy, (limits[col], limits[row]), point, kind=kind, bins=bins)
                if col == 0:
                    ax.set_ylabel(names[i])
                else:
                    ax.tick_params(labelleft=False)
            ax.set_xlim(limits[col])
            if row == k - 1:
                ax.set_xlabel(names[j])
            else:
                ax.tick_params(labelbottom=False)
    _pairplot_legend(axes)
    return _root(fig)


def coverage(
    levels: Any,
    curves: Any,
    *,
    labels: Sequence[str] | None = None,
    num_simulations: int | None = None,
    significance: float = 0.01,
    expected: Any = None,
    annotate: bool = True,
    title: str | None = "expected coverage",
    xlabel: str = "credibility level",
    ylabel: str = "fraction of true parameters inside",
    ax: Axes | None = None,
) -> Figure:
    """Expected-coverage curves against the diagonal a calibrated posterior follows.

    ``curves[m, l]`` is the fraction of simulations whose true parameter lies inside the
    posterior's credible region of level ``levels[l]`` (e.g. from
    :func:`smcwake.calibration_metrics.expected_coverage`). Below the diagonal the regions are too
    small (over-confident), above it too large (under-confident). With ``num_simulations``
    the shaded band is where a calibrated posterior's whole curve stays with probability at
    least ``1 - significance`` (the band of :func:`smcwake.calibration_metrics.ecdf_band`), around
    ``expected`` (default the diagonal; pass the exact expected curve when the levels are
    coarse).

    Shapes: levels [L], curves [L] or [M, L], expected [L] or None -> Figure.

    >>> import matplotlib.pyplot as plt
    >>> levels = torch.linspace(0, 1, 11)
    >>> fig = coverage(levels, levels**1.5, labels=["q"], num_simulations=200)
    >>> plt.close(fig)
    """
    plt = _pyplot("smcwake.plot.coverage")
    grid = _as_array("levels", levels).reshape(-1)
    values = _as_array("curves", curves)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2 or values.shape[1] != grid.shape[0]:
        raise ValueError(
            f"curves: expected shape [L] or [M, L] with L = {grid.shape[0]} (the levels), "
            f"received {list(values.shape)}"
        )
    if labels is not None and (isinstance(labels, str) or len(labels) != values.shape[0]):
        raise ValueError(f"labels: expected {values.shape[0]} names, received {labels!r}")
    centre = grid if expected is None else _as_array("expected", expected).reshape(-1)
    if centre.shape != grid.shape:
        raise ValueError(
            f"expected: expected shape [{grid.shape[0]}], received {list(centre.shape)}"
        )
    if ax is None:
        fig = plt.figure(figsize=(4.6, 4.4), layout="constrained")
        ax = fig.subplots()
    if num_simulations is not None:
        eps = calibration_metrics.ecdf_band(int(num_simulations), significance)
        ax.fill_between(
            grid,
            np.clip(centre - eps, 0, 1),
            np.clip(centre + eps, 0, 1),
            color=_BAND_COLOR,
            lw=0,
            label=f"{100 * (1 - significance):.3g}% band, {num_simulations} simulations",
        )
    ax.plot([0, 1], [0, 1], color="black", lw=1, ls="--", label="calibrated")
    for m, curve in enumerate(values):
        name = labels[m] if labels is not None else None
        color = _SAMPLES_COLOR if values.shape[0] == 1 else f"C{m % 10}"
        ax.plot(grid, curve, color=color, lw=1.8, label=name)
    if annotate:
        note = {"transform": ax.transAxes, "fontsize": 8, "color": "0.4"}
        ax.text(0.04, 0.96, "under-confident", va="top", **note)
        ax.text(0.96, 0.3, "over-confident", ha="right", **note)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    return _root(ax.figure)


def sbc_ranks(
    ranks: Any,
    num_samples: int,
    *,
    labels: Sequence[str] | None = None,
    dims: Sequence[int] | None = None,
    num_bins: int | None = None,
    band: float = 0.99,
    fig: Figure | SubFigure | None = None,
) -> Figure:
    """Rank histograms of simulation-based calibration, one panel per dimension.

    ``ranks[i, j]`` is the number of the posterior's S draws below the true parameter in
    coordinate j of simulation i (:func:`smcwake.calibration_metrics.sbc_ranks`); a calibrated
    posterior gives uniform ranks. Each bin's count is then Binomial(N, bin's share of the S + 1
    rank values): the line marks its mean, the shaded band its central ``band`` interval (per
    bin, so about ``1 - band`` of the bins fall outside by chance; they are drawn in red). A U
    shape means over-confidence, a hump under-confidence, a slope a biased location. Bins match
    :func:`smcwake.calibration_metrics.sbc_uniformity`'s test.

    Shapes: ranks [N, d] integer in [0, S], num_samples S -> Figure.

    >>> import matplotlib.pyplot as plt
    >>> g = torch.Generator().manual_seed(0)
    >>> fig = sbc_ranks(torch.randint(0, 101, (500, 2), generator=g), 100)
    >>> plt.close(fig)
    """
    plt = _pyplot("smcwake.plot.sbc_ranks")
    stats = require("scipy.stats", "smcwake.plot.sbc_ranks")
    if not 0.0 < band < 1.0:
        raise ValueError(f"band: expected a probability in (0, 1), received {band!r}")
    if not isinstance(ranks, torch.Tensor):
        ranks = torch.as_tensor(np.asarray(ranks))
    counts, expected = calibration_metrics.sbc_histogram(ranks, num_samples, num_bins=num_bins)
    n, d = ranks.shape
    chosen = _choose_dims(d, dims)
    names = _labels(labels, d)
    bins = expected.shape[0]
    num_values = num_samples + 1
    first_rank = np.array([math.ceil(b * num_values / bins) for b in range(bins + 1)], float)
    widths = np.diff(first_rank)  # rank values per bin
    share = widths / num_values
    low = stats.binom.ppf((1 - band) / 2, n, share)
    high = stats.binom.ppf((1 + band) / 2, n, share)
    cols = min(len(chosen), 4)
    rows = math.ceil(len(chosen) / cols)
    if fig is None:
        fig = plt.figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    edges = first_rank - 0.5
    for ax, j in zip(axes, chosen, strict=False):
        c = counts[j].numpy()
        outside = (c < low) | (c > high)
        colors = np.where(outside, _TRUTH_COLOR, _SAMPLES_COLOR)
        ax.bar(edges[:-1], c, width=widths, align="edge", color=colors, alpha=0.7)
        ax.fill_between(
            edges,
            np.append(low, low[-1]),
            np.append(high, high[-1]),
            step="post",
            color="0.5",
            alpha=0.3,
            lw=0,
            label=f"{band:.0%} of calibrated counts",
        )
        ax.stairs(expected.numpy(), edges, color="black", lw=1, label="expected")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_title(names[j], fontsize=9)
        ax.set_xlabel(f"rank among {num_samples} draws")
    for ax in axes[len(chosen) :]:
        ax.set_visible(False)
    axes[0].set_ylabel("simulations")
    handles, names_ = axes[0].get_legend_handles_labels()
    fig.legend(handles, names_, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _root(fig)
