"""smcwake.plot: what each figure draws (read back from the matplotlib artists), its input checks,
and the error that names the extra when matplotlib is missing."""

import sys

import matplotlib
import numpy as np
import pytest
import torch

from smcwake import diagnostics, plot

matplotlib.use("Agg")  # headless; each test closes what it opened
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def draws(n: int, d: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def bars(ax) -> list:
    return [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]


# ----------------------------------------------------------------------------------- pairplot
def test_pairplot_is_a_lower_triangle_with_marginals_on_the_diagonal():
    fig = plot.pairplot(draws(400, 3), labels=["a", "b", "c"])
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 9
    assert len(visible_axes(fig)) == 6  # 3 marginals + 3 pairs; the upper triangle is hidden
    grid = np.asarray(fig.axes).reshape(3, 3)
    assert [grid[2, j].get_xlabel() for j in range(3)] == ["a", "b", "c"]
    assert [grid[i, 0].get_ylabel() for i in (1, 2)] == ["b", "c"]
    assert len(grid[0, 0].patches) == 1  # one histogram: no reference given
    assert len(grid[1, 0].collections) == 1  # one scatter


def test_pairplot_marginal_is_a_density_of_the_samples():
    samples = draws(20_000, 1, scale=2.0)
    fig = plot.pairplot(samples, bins=40)
    (ax,) = fig.axes
    (patch,) = ax.patches  # the step histogram of the samples
    xy = patch.get_xy()
    heights, lefts = xy[1:-1:2, 1], xy[1:-1:2, 0]
    width = float(np.diff(np.unique(lefts)).min())
    # a density integrates to one over the shown range (which holds the central 99%)
    assert abs(float(heights.sum() * width) - 1.0) < 0.02
    peak = float(heights.max())  # N(0, 2^2) peaks at 1 / (2 sqrt(2 pi)) = 0.199
    assert abs(peak - 0.199) < 0.03


def test_pairplot_draws_reference_truth_and_legend():
    truth = torch.tensor([0.5, -1.0])
    fig = plot.pairplot(draws(300, 2), reference=draws(500, 2, seed=1), truth=truth)
    grid = np.asarray(fig.axes).reshape(2, 2)
    assert len(grid[0, 0].patches) == 2  # reference (filled) and samples
    assert len(grid[1, 0].collections) == 2  # two scatters
    vertical = [line for line in grid[1, 0].lines if line.get_xdata()[0] == 0.5]
    assert vertical, "the truth's first coordinate is marked in the pair panel"
    assert grid[0, 1].get_visible()  # the legend's panel; its axis is off
    assert not grid[0, 1].axison
    assert [t.get_text() for t in grid[0, 1].get_legend().get_texts()] == [
        "reference",
        "posterior",
        "truth",
    ]
    lo, hi = grid[1, 1].get_xlim()
    assert lo < -1.0 < hi  # limits hold the truth


def test_pairplot_contour_kind_and_dims_subset():
    fig = plot.pairplot(draws(3000, 4), kind="contour", dims=[0, 3], labels=list("abcd"))
    grid = np.asarray(fig.axes).reshape(2, 2)
    assert grid[1, 0].get_xlabel() == "a"
    assert grid[1, 0].get_ylabel() == "d"
    assert len(grid[1, 0].collections) >= 1  # contour lines


def test_pairplot_accepts_one_observation_batch_and_numpy():
    fig = plot.pairplot(draws(100, 2)[None])  # [1, S, d], as posterior.sample(x[:1], S)
    assert len(visible_axes(fig)) == 3
    fig = plot.pairplot(draws(100, 2).numpy())
    assert len(visible_axes(fig)) == 3


def test_pairplot_drops_non_finite_draws_with_a_warning():
    samples = draws(100, 2)
    samples[3, 1] = float("nan")
    with pytest.warns(UserWarning, match="dropped 1 of 100 draws"):
        plot.pairplot(samples)


def test_pairplot_caps_dimensions_with_a_warning():
    with pytest.warns(UserWarning, match=f"first {plot.MAX_DIMS} of 12"):
        fig = plot.pairplot(draws(50, 12))
    assert len(fig.axes) == plot.MAX_DIMS**2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples": torch.randn(3, 10, 2)}, r"\[S, d\].*pass samples\[i\]"),
        ({"samples": torch.randn(10, 2), "reference": torch.randn(10, 3)}, r"\[S, 2\]"),
        ({"samples": torch.randn(10, 2), "truth": torch.zeros(3)}, r"truth: expected shape \[2\]"),
        ({"samples": torch.randn(10, 2), "labels": ["a"]}, "labels: expected 2 names"),
        ({"samples": torch.randn(10, 2), "dims": [2]}, r"dims: expected indices in \[0, 2\)"),
        ({"samples": torch.randn(10, 2), "kind": "kde"}, "kind: expected"),
    ],
)
def test_pairplot_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot.pairplot(**kwargs)


# ----------------------------------------------------------------------------------- coverage
def test_coverage_plots_curves_and_the_dkw_band():
    levels = torch.linspace(0, 1, 11)
    fig = plot.coverage(
        levels,
        torch.stack([levels**2, levels**0.5]),
        labels=["over", "under"],
        num_simulations=400,
    )
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(lines["over"].get_ydata(), (levels**2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(lines["calibrated"].get_ydata(), [0, 1])
    (band,) = ax.collections
    top = band.get_paths()[0].vertices[:, 1].max()
    eps = diagnostics.ecdf_band(400, 0.01)
    assert top == pytest.approx(min(1.0, 1.0 + eps))
    mid = [v for v in band.get_paths()[0].vertices if abs(v[0] - 0.5) < 1e-9]
    assert sorted(v[1] for v in mid) == pytest.approx([0.5 - eps, 0.5 + eps])


def test_coverage_draws_into_given_axes_and_checks_shapes():
    fig, ax = plt.subplots()
    assert plot.coverage(torch.linspace(0, 1, 5), torch.linspace(0, 1, 5), ax=ax) is fig
    with pytest.raises(ValueError, match=r"curves: expected shape \[L\] or \[M, L\] with L = 5"):
        plot.coverage(torch.linspace(0, 1, 5), torch.zeros(4))


# ----------------------------------------------------------------------------------- SBC
def test_sbc_ranks_histogram_counts_and_band():
    g = torch.Generator().manual_seed(0)
    ranks = torch.randint(0, 101, (400, 2), generator=g)
    ranks[:, 1] = 0  # every rank in the first bin: far outside the band
    fig = plot.sbc_ranks(ranks, 100, labels=["mu", "sigma"], num_bins=10)
    ax_mu, ax_sigma = visible_axes(fig)
    assert (ax_mu.get_title(), ax_sigma.get_title()) == ("mu", "sigma")
    counts, _ = diagnostics.sbc_histogram(ranks, 100, num_bins=10)
    heights = [bar.get_height() for bar in bars(ax_mu)]
    assert heights == counts[0].tolist()
    red = matplotlib.colors.to_rgba("C3", alpha=0.7)
    sigma_colors = [bar.get_facecolor() for bar in bars(ax_sigma)]
    assert len(sigma_colors) == 10
    assert all(c == pytest.approx(red) for c in sigma_colors)  # every bin is out of band
    assert sum(c == pytest.approx(red) for c in map(lambda b: b.get_facecolor(), bars(ax_mu))) <= 1


def test_sbc_ranks_band_holds_about_99_percent_of_calibrated_counts():
    # uniform ranks: each bin count is Binomial(N, 1/20); the per-bin 99% band should miss
    # about 1% of 20 bins x 50 dims = 10 bins (sd about 3); more than 25 would mean a wrong band
    g = torch.Generator().manual_seed(1)
    ranks = torch.randint(0, 100, (1000, 50), generator=g)
    fig = plot.sbc_ranks(ranks, 99, dims=range(50))
    red = matplotlib.colors.to_rgba("C3", alpha=0.7)
    misses = sum(bar.get_facecolor() == pytest.approx(red) for ax in fig.axes for bar in bars(ax))
    assert misses <= 25


# ------------------------------------------------------------------------------ no matplotlib
def test_missing_matplotlib_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for call in (
        lambda: plot.pairplot(draws(10, 2)),
        lambda: plot.coverage([0, 1], [0, 1]),
        lambda: plot.sbc_ranks(torch.zeros(10, 1, dtype=torch.int64), 5),
    ):
        with pytest.raises(ImportError, match=r"pip install 'smcwake\[plot\]'"):
            call()
