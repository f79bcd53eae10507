"""Reports: Markdown tables and PNG figures from the JSON results of a benchmark or a fit.

:func:`write_report` reads ``results.json`` (written by :func:`smcwake.bench.run_bench`, the
``smcwake fit`` and ``smcwake demo`` commands) and writes ``report.md`` and the figures next to
it, so a report can be rebuilt at any time without training again (``smcwake report DIR``).

Figures (matplotlib, Agg backend), each written only when the results hold its data:

- ``curves.png``: the metric tracked during training against gradient steps and against
  likelihood evaluations, one line per method (mean over seeds, band from min to max);
- ``coverage.png``: expected coverage of q's highest-density regions against the nominal level;
- ``posteriors.png``: samples of q against reference samples for a few observations (2-D tasks);
- ``collapse.png``: the wake-collapse panels of the toy model (wake's self-normalized estimate
  against the proposal's scale; each method's q(z | x = 12); q's scale over training);
- ``reconstructions.png``: held-out digits and each method's reconstructions;
- ``convergence.png``: the held-out-free convergence signal that ``fit`` records for SMC-Wake
  methods (``bank_forward_kl`` and ``bank_ess`` in each run's ``history.json`` under the report's
  folder) against gradient steps, one line per run.

Tables give ``mean ± sd`` over seeds (sample standard deviation; the count in the header). A
method that could not run on the task is listed with its reason.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smcwake._optional import require
from smcwake.bench.results import load_results, to_json_data

__all__ = ["METRIC_INFO", "metric_table", "budget_table", "render_markdown", "write_report"]

METRIC_INFO: dict[str, tuple[str, str]] = {
    "forward_kl": ("forward KL", "lower is better; KL(p || q), nats"),
    "reverse_kl": ("reverse KL", "lower is better; KL(q || p), nats"),
    "mean_l1": ("mean L1", "lower is better; sum over dimensions of |mean_q - mean_p|"),
    "c2st": ("C2ST", "0.5 is best: classifier accuracy telling q-samples from reference samples"),
    "mmd": ("MMD²", "0 is best: unbiased squared MMD, Gaussian kernel, median bandwidth"),
    "coverage_error": ("coverage error", "0 is best: mean |coverage - level| over levels"),
    "sbc_p": (
        "SBC p",
        "Bonferroni-corrected smallest SBC uniformity p-value; small = miscalibrated",
    ),
    "log_q_true": ("log q(z_true given x)", "higher is better"),
    "log_evidence_is": ("log p(x) (IS)", "importance-sampling estimate with q as proposal"),
    "evidence_error": ("IS evidence error", "0 is best: IS estimate minus the exact log p(x)"),
    "bank_evidence_error": (
        "log Zbar error",
        "0 is best: SMC-Wake's running estimate minus exact",
    ),
    "bank_evidence_spread": ("log Zhat sd", "spread of the retained SMC runs' log evidence"),
    "heldout_loglik": ("held-out log p(x)", "higher is better; SMC estimate, learned decoder"),
    "heldout_iwbo": ("held-out IWBO", "higher is better; importance-weighted bound with q"),
    "heldout_unconverged": ("unconverged", "held-out SMC runs that did not reach tau = 1"),
    "iwbo": ("IWBO, 100 held-out images", "higher is better; K = 100, q as proposal"),
}
"""Column label and meaning of every metric a report may show."""

_SUMMARY_ORDER = tuple(METRIC_INFO)


# ------------------------------------------------------------------------------- numbers
def _fmt(value: float | None, digits: int = 3, *, count: bool = False) -> str:
    """``digits`` significant digits; ``count`` values of 1000 or more as integers with
    separators, other values of 100,000 or more in scientific notation.

    >>> [_fmt(v) for v in (0.2, 2.0, 123.456, 32000.4, 1.6e16, 1.23e-5, float("nan"))]
    ['0.2', '2', '123', '32,000', '1.60e+16', '1.23e-05', 'n/a']
    >>> _fmt(25_610_000, count=True)
    '25,610,000'
    """
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if count and abs(value) >= 1000:
        return f"{round(value):,}"
    if abs(value) >= 1e5 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    if abs(value) >= 1000:
        return f"{round(value):,}"
    return f"{value:.{digits}g}"


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, math.nan, len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var), len(vals)


def _cell(values: Sequence[float], *, count: bool = False) -> str:
    mean, sd, n = _stats(values)
    if n == 0:
        return "n/a"
    if n == 1 or math.isnan(sd) or sd == 0:
        return _fmt(mean, count=count)
    return f"{_fmt(mean, count=count)} ± {_fmt(sd, 2, count=count)}"


def _ok_runs(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in entry.get("runs", []) if "failed" not in r]


def _metric_keys(results: dict[str, Any]) -> list[str]:
    present: set[str] = set()
    for entry in results["methods"].values():
        for run in _ok_runs(entry):
            present.update(run.get("metrics", {}))
    known = [k for k in _SUMMARY_ORDER if k in present]
    return known + sorted(present - set(known))


# ------------------------------------------------------------------------------- tables
def metric_table(results: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """Markdown table: one row per method, ``mean ± sd`` over seeds for each metric.

    Methods that could not run (or failed on every seed) get a row with the reason.

    >>> results = {"methods": {"wake": {"status": "ok", "runs": [
    ...     {"metrics": {"forward_kl": 2.0}}, {"metrics": {"forward_kl": 4.0}}]},
    ...     "elbo": {"status": "unavailable", "reason": "bounded prior", "runs": []}}}
    >>> print(metric_table(results))
    | method | seeds | forward KL |
    |:---|---:|---:|
    | wake | 2 | 3 ± 1.4 |
    | elbo | — | not run: bounded prior |
    """
    keys = list(keys) if keys is not None else _metric_keys(results)
    header = ["method", "seeds", *(METRIC_INFO.get(k, (k, ""))[0] for k in keys)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|:---|" + "---:|" * (len(header) - 1),
    ]
    for method, entry in results["methods"].items():
        runs = _ok_runs(entry)
        if entry.get("status") != "ok" or not runs:
            why = entry.get("reason") or "no successful run"
            verb = "not run" if entry.get("status") == "unavailable" else "failed"
            lines.append(f"| {method} | — | {verb}: {why} |")
            continue
        cells = [_cell([r["metrics"].get(k, math.nan) for r in runs]) for k in keys]
        failed = len(entry.get("runs", [])) - len(runs)
        diverged = sum("diverged" in r for r in runs)
        notes = [f"{failed} failed"] * bool(failed) + [f"{diverged} diverged"] * bool(diverged)
        seeds = f"{len(runs)}" + (f" ({', '.join(notes)})" if notes else "")
        lines.append("| " + " | ".join([method, seeds, *cells]) + " |")
    return "\n".join(lines)


def budget_table(results: dict[str, Any]) -> str:
    """Markdown table of what each method spent: steps, likelihood evaluations, time.

    >>> results = {"methods": {"wake": {"status": "ok", "runs": [{"steps": 10,
    ...     "likelihood_evals": 3200, "simulations": 0, "wall_time": 1.5,
    ...     "stopped_by": "steps"}]}}}
    >>> print(budget_table(results).splitlines()[2])
    | wake | 10 | 3,200 | 0 | 1.5 | steps |
    """
    lines = [
        "| method | gradient steps | likelihood evaluations | simulations | wall time (s) "
        "| stopped by |",
        "|:---|---:|---:|---:|---:|:---|",
    ]
    for method, entry in results["methods"].items():
        runs = _ok_runs(entry)
        if not runs:
            continue
        stopped = sorted({r.get("stopped_by", "steps") for r in runs})
        lines.append(
            f"| {method} | {_cell([r['steps'] for r in runs], count=True)} "
            f"| {_cell([r['likelihood_evals'] for r in runs], count=True)} "
            f"| {_cell([r.get('simulations', 0) for r in runs], count=True)} "
            f"| {_cell([r['wall_time'] for r in runs])} | {', '.join(stopped)} |"
        )
    return "\n".join(lines)


def _collapse_table(collapse: dict[str, Any]) -> str:
    lines = [
        "| proposal sd s | wake (self-normalized) estimate | exact -E_p[log r] | "
        "exact posterior's score | ESS |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in collapse["rows"]:
        lines.append(
            f"| {row['scale']:.0e} | {row['estimate']:.2f} | {row['exact']:.4g} "
            f"| {row['posterior_score']:.2f} | {row['ess']:.1f} |"
        )
    return "\n".join(lines)


def _diverged_note(message: str) -> str:
    """A run stopped by non-finite gradients, in words (parsed from fit's message)."""
    found = re.search(r"(\d+) consecutive non-finite losses at step (\d+)", message)
    if found is None:
        return f"diverged ({message}); scored at its last finite state"
    bad, step = int(found.group(1)), int(found.group(2))
    return (
        f"stopped at step {step} after {bad} non-finite gradients in a row; scored at its last "
        f"update (step {step - bad})"
    )


def render_markdown(results: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """The report as Markdown (tables, settings, figure links)."""
    title = {
        "bench": "Benchmark",
        "fit": "Training run",
        "demo": "Demo",
        "many-samplers": "Many small SMC samplers against one big one",
        "digits": "Handwritten digits with a learned decoder",
    }.get(results.get("kind", "bench"), "Results")
    out = [f"# {title}: {results['task']}", "", results.get("description", ""), ""]
    if results.get("command"):
        out += ["Command:", "", "```", results["command"], "```", ""]
    settings = results.get("settings", {})
    train = settings.get("train", {})
    facts = []
    if settings.get("num_observations"):
        count = settings["num_observations"]
        facts.append(f"{count} observation{'s' if count != 1 else ''}")
    if train.get("encoder"):
        facts.append(f"encoder `{train['encoder']}`")
    per_method = ("num_particles", "max_runs", "refresh_every")  # vary by setting there
    if results.get("kind") == "many-samplers":
        train = {k: v for k, v in train.items() if k not in per_method}
        facts.append("K, M and the refresh interval as in each row's label")
    for key, label in (
        ("num_particles", "K"),
        ("batch_size", "batch"),
        ("lr", "lr"),
        ("refresh_every", "refresh every"),
        ("num_proposals", "proposals"),
    ):
        if key in train:
            facts.append(f"{label} = {train[key]}")
    smc = train.get("smc")
    if isinstance(smc, dict):
        steps = smc.get("num_mcmc_steps")
        facts.append(f"SMC kernel {smc.get('kernel')} ({steps or 'default'} steps per stage)")
    if settings.get("steps"):
        facts.append(f"at most {settings['steps']:,} gradient steps")
    budgets = results.get("budgets") or {}
    caps = sorted({b for b in budgets.values() if b})
    if settings.get("budget"):
        facts.append(f"at most {settings['budget']:,} likelihood evaluations")
    elif caps:
        facts.append(
            "at most " + " / ".join(f"{b:,}" for b in caps) + " likelihood evaluations "
            "(what the first method used; per seed)"
        )
    if facts:
        out += ["Settings: " + ", ".join(facts) + ".", ""]
    if results.get("seeds") is not None:
        out += [f"Training seeds: {', '.join(str(s) for s in results['seeds'])}.", ""]
    out += ["## Metrics", "", metric_table(results), ""]
    keys = _metric_keys(results)
    if keys:
        out += [
            "Columns: "
            + "; ".join(
                f"**{METRIC_INFO[k][0]}**: {METRIC_INFO[k][1]}" for k in keys if k in METRIC_INFO
            )
            + ".",
            "",
        ]
    if "c2st" in keys:
        out += [f"C2ST classifier: {results.get('c2st_classifier', 'see diagnostics.c2st')}.", ""]
    out += ["## Budget", "", budget_table(results), ""]
    notes = [
        f"- {method}, seed {run['seed']}: "
        + (_diverged_note(run["diverged"]) if "diverged" in run else f"failed ({run['failed']})")
        for method, entry in results["methods"].items()
        for run in entry.get("runs", [])
        if "diverged" in run or "failed" in run
    ]
    notes += [
        f"- {method}, seed {run['seed']}: not scored: {error}"
        for method, entry in results["methods"].items()
        for run in entry.get("runs", [])
        for error in run.get("metric_errors", [])
    ]
    if notes:
        out += ["Runs that did not finish normally:", "", *notes, ""]
    if "collapse" in results:
        c = results["collapse"]
        out += [
            "## Why wake collapses",
            "",
            f"Toy model z ~ N(0, 10²), x | z ~ N(z, 1), x = {c['observed']:g}: the "
            "self-normalized estimate of the cross-entropy -E_p[log r] that wake minimizes, "
            "for proposals r = N(0, s²), falls as r collapses, below the exact posterior's own "
            f"score ({c['rows'][0]['posterior_score']:.2f}), while the true value explodes.",
            "",
            _collapse_table(c),
            "",
        ]
    if figures:
        out += ["## Figures", ""]
        out += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------- figures
def _plt():
    matplotlib = require("matplotlib", "the figures of smcwake.report")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _curve_metric_name(results: dict[str, Any]) -> str | None:
    for entry in results["methods"].values():
        for run in _ok_runs(entry):
            for key in run.get("curve", {}):
                if key not in ("step", "likelihood_evals", "wall_time", "q_sd_at_observed"):
                    return key
    return None


def plot_curves(results: dict[str, Any], path: Path) -> Path | None:
    """The tracked metric against steps and against likelihood evaluations."""
    name = _curve_metric_name(results)
    if name is None:
        return None
    plt = _plt()
    methods = [m for m, e in results["methods"].items() if _ok_runs(e)]
    colors = _colors(methods)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    positive = True
    for method in methods:
        for ax, xkey in zip(axes, ("step", "likelihood_evals"), strict=True):
            runs = [r["curve"] for r in _ok_runs(results["methods"][method]) if name in r["curve"]]
            if not runs:
                continue
            length = min(len(r[name]) for r in runs)
            xs = [sum(r[xkey][i] for r in runs) / len(runs) for i in range(length)]
            ys = [[r[name][i] for r in runs] for i in range(length)]
            mean = [sum(v) / len(v) for v in ys]
            positive &= all(min(v) > 0 for v in ys)
            ax.plot(xs, mean, marker="o", ms=3, color=colors[method], label=method)
            if len(runs) > 1:
                ax.fill_between(
                    xs,
                    [min(v) for v in ys],
                    [max(v) for v in ys],
                    color=colors[method],
                    alpha=0.15,
                )
    label = METRIC_INFO.get(name, (name, ""))[0]
    for ax, xlabel in zip(axes, ("gradient steps", "likelihood evaluations"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        if positive:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[1].ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    axes[1].set_xlim(left=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['task']}: {label} during training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_coverage(results: dict[str, Any], path: Path) -> Path | None:
    """Expected coverage curves (mean over seeds) against the diagonal, with the band a
    calibrated posterior stays in (:func:`smcwake.plot.coverage`)."""
    plt = _plt()
    from smcwake.plot import coverage

    methods = [
        m for m, e in results["methods"].items() if any("coverage" in r for r in _ok_runs(e))
    ]
    if not methods:
        return None
    curves, levels = [], None
    for method in methods:
        runs = [r["coverage"] for r in _ok_runs(results["methods"][method]) if "coverage" in r]
        levels = runs[0]["level"]
        curves.append(
            [sum(r["coverage"][i] for r in runs) / len(runs) for i in range(len(levels))]
        )
    fig = coverage(
        levels,
        curves,
        labels=methods,
        num_simulations=results.get("settings", {}).get("num_observations"),
        title=f"{results['task']}: expected coverage",
        xlabel="credibility level of q's HPD region",
        ylabel="fraction of true z inside",
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_posteriors(results: dict[str, Any], path: Path) -> Path | None:
    """q samples against reference samples, observations in rows, methods in columns."""
    reference = results.get("panel_reference")
    if reference is None:
        return None
    plt = _plt()
    methods = [
        m
        for m, e in results["methods"].items()
        if _ok_runs(e) and "panel_samples" in _ok_runs(e)[0]
    ]
    n_obs = len(reference)
    cols = 1 + len(methods)
    fig, axes = plt.subplots(n_obs, cols, figsize=(2.3 * cols, 2.3 * n_obs), squeeze=False)
    for i in range(n_obs):
        ref = reference[i]
        panels = [("reference", ref, "black")] + [
            (m, _ok_runs(results["methods"][m])[0]["panel_samples"][i], "C0") for m in methods
        ]
        for j, (label, samples, color) in enumerate(panels):
            ax = axes[i, j]
            if j > 0:
                ax.scatter(*zip(*ref, strict=True), s=1, color="0.75", alpha=0.5)
            ax.scatter(*zip(*samples, strict=True), s=1, color=color, alpha=0.5)
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label, fontsize=9)
    fig.suptitle(
        f"{results['task']}: q (blue) against the reference (grey), seed "
        f"{results.get('seeds', [0])[0]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_collapse(results: dict[str, Any], path: Path) -> Path | None:
    """The toy model's collapse panels."""
    collapse = results.get("collapse")
    if collapse is None:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    rows = collapse["rows"]
    scales = [r["scale"] for r in rows]
    ax = axes[0]
    ax.plot(
        scales,
        [r["estimate"] for r in rows],
        marker="o",
        color="C0",
        label="wake's estimate (self-normalized)",
    )
    ax.axhline(
        rows[0]["posterior_score"],
        color="black",
        ls="--",
        label=f"exact posterior's score: {rows[0]['posterior_score']:.2f}",
    )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("proposal sd s (r = N(0, s²))")
    ax.set_ylabel("estimate of -E_p[log r]", color="C0")
    ax.set_title(f"a. wake rewards collapse (x = {collapse['observed']:g})")
    right = ax.twinx()
    right.plot(
        scales, [r["exact"] for r in rows], marker="s", color="C1", label="exact -E_p[log r]"
    )
    right.set_yscale("log")
    right.set_ylabel("exact -E_p[log r] (log scale)", color="C1")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)

    post = collapse["posterior"]
    methods = [
        m
        for m, e in results["methods"].items()
        if _ok_runs(e) and "q_at_observed" in _ok_runs(e)[0]
    ]
    colors = _colors(list(results["methods"]))
    ax = axes[1]
    lo, hi = post["mean"] - 5 * post["sd"], post["mean"] + 5 * post["sd"]
    grid = [lo + (hi - lo) * i / 400 for i in range(401)]

    def density(mean, sd):
        return [
            math.exp(-0.5 * ((g - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)) for g in grid
        ]

    for method in methods:
        q = _ok_runs(results["methods"][method])[0]["q_at_observed"]
        ax.plot(grid, density(q["mean"], max(q["sd"], 1e-3)), color=colors[method], label=method)
    ax.plot(
        grid,
        density(post["mean"], post["sd"]),
        color="black",
        ls="--",
        lw=2,
        label="exact",
        zorder=5,
    )
    ax.set_xlabel("z")
    ax.set_title(f"b. q(z | x = {collapse['observed']:g}) after training")
    ax.legend(fontsize=7)
    ax.set_ylim(bottom=0, top=1.6 * max(density(post["mean"], post["sd"])))

    ax = axes[2]
    for method in methods:
        for k, run in enumerate(_ok_runs(results["methods"][method])):
            curve = run.get("curve", {})
            if "q_sd_at_observed" not in curve:
                continue
            ax.plot(
                curve["step"],
                curve["q_sd_at_observed"],
                color=colors[method],
                alpha=0.8,
                label=method if k == 0 else None,
            )
    ax.axhline(post["sd"], color="black", ls="--", label="exact posterior sd")
    ax.set_yscale("log")
    ax.set_xlabel("gradient steps")
    ax.set_ylabel(f"sd of q(z | x = {collapse['observed']:g})")
    ax.set_title("c. q's scale during training")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reconstructions(results: dict[str, Any], path: Path) -> Path | None:
    """Held-out digits (top row) and each method's reconstructions."""
    targets = results.get("reconstruction_targets")
    if targets is None:
        return None
    plt = _plt()
    methods = [
        m
        for m, e in results["methods"].items()
        if _ok_runs(e) and "reconstructions" in _ok_runs(e)[0]
    ]
    rows = [("held-out", targets)] + [
        (m, _ok_runs(results["methods"][m])[0]["reconstructions"]) for m in methods
    ]
    n = len(targets)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.25 * len(rows)), squeeze=False)
    for i, (label, images) in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            pixels = images[j]
            ax.imshow(
                [pixels[r * 8 : (r + 1) * 8] for r in range(8)], cmap="gray_r", vmin=0, vmax=1
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle("held-out digits and reconstructions sigmoid(W E_q[z] + b)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _histories(root: Path) -> list[tuple[str, dict[str, list]]]:
    """(label, history) of every ``history.json`` below ``root`` with a convergence signal."""
    import json

    found = []
    for path in sorted(root.glob("**/history.json")):
        try:
            history = json.loads(path.read_text())["history"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if any(v is not None for v in history.get("bank_forward_kl", [])):
            label = path.parent.relative_to(root).as_posix()
            found.append((label if label != "." else "fit", history))
    return found


def plot_convergence(results: dict[str, Any], path: Path) -> Path | None:
    """The bank's forward-KL estimate and the ESS fraction of q against gradient steps."""
    histories = _histories(path.parent)
    if not histories:
        return None
    plt = _plt()
    runs = [label.removeprefix("runs/") for label, _ in histories]
    groups = [label.split("/")[0] for label in runs]
    colors = _colors(list(dict.fromkeys(groups)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, group, (_, history) in zip(runs, groups, histories, strict=True):
        for ax, key in zip(axes, ("bank_forward_kl", "bank_ess"), strict=True):
            kept = [i for i, v in enumerate(history[key]) if v is not None]
            steps, values = [history["step"][i] for i in kept], [history[key][i] for i in kept]
            ax.plot(steps, values, marker="o", ms=3, color=colors[group], label=label)
    axes[0].set_ylabel("forward KL estimate from the bank (nats)")
    axes[1].set_ylabel("ESS fraction of q against the bank")
    axes[1].set_ylim(0, 1.05)
    for ax in axes:
        ax.set_xlabel("gradient steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{results['task']}: convergence signal (training observations only)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: str | os.PathLike, results: dict[str, Any] | None = None) -> Path:
    """Write ``report.md`` and the figures into ``out``; returns the report's path.

    ``results`` defaults to ``out/results.json`` (see
    :func:`smcwake.bench.results.load_results`).
    """
    out = Path(out)
    # given results: the same numbers the JSON file holds (tensors become lists)
    results = load_results(out) if results is None else to_json_data(results)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for name, plot in (
        ("posteriors.png", plot_posteriors),
        ("curves.png", plot_curves),
        ("coverage.png", plot_coverage),
        ("collapse.png", plot_collapse),
        ("reconstructions.png", plot_reconstructions),
        ("convergence.png", plot_convergence),
    ):
        written = plot(results, out / name)
        if written is not None:
            figures.append(name)
    path = out / "report.md"
    path.write_text(render_markdown(results, figures))
    return path
