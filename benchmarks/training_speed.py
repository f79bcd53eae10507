"""Time to accuracy of ``fit``: the forward KL of the trained encoder against CPU time.

Model (as a user would write it): prior U[-1, 1]^10 (``Independent(Uniform(-1, 1), 1)``),
x | z ~ N(z, 0.32^2 I), 100 observations simulated from the prior (data seed 0). Its posterior
factorizes: each coordinate is N(x_i, 0.32^2) truncated to [-1, 1], so exact draws and the
exact log density are cheap, and the forward KL

    KL(p || q) = E_{z ~ p(z | x)} [log p(z | x) - log q(z | x)]

is estimated for every observation by Monte Carlo over ``DRAWS`` exact draws (the same draws
at every evaluation, so successive values differ by q only), then averaged over the 100
observations. This is what SMC-Wake minimizes, measured against the truth instead of the bank.

Each run calls ``fit(model, x, **settings)`` (today's defaults, with the row's settings
replacing some) on one thread and evaluates the encoder every ``--eval-every`` steps; the CPU
time of the evaluations is left out. Times are CPU seconds of the process
(``time.process_time()``, one torch thread, OMP_NUM_THREADS=1): what the run takes on one
unloaded core. Wall-clock times on a shared machine move with the other jobs' load; CPU time
much less so (it still grows somewhat with contention for caches and memory bandwidth).

With the cosine schedule, the forward KL at step t of a T-step run is not that of a t-step
run (the learning rate is still high at t); a row's curve is its own run's, and the point to
compare is a row's last one.

    python benchmarks/training_speed.py run "previous defaults" --eval-every 250
    python benchmarks/training_speed.py run "32 particles per step" --set particles_per_step=32
    python benchmarks/training_speed.py write

Results are appended to docs/results/training-speed.jsonl (one JSON line per run; a row name
already there is skipped); ``write`` renders them into docs/RESULTS.md between the
``<!-- begin training-speed -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402
from _common import ROOT, table, write_section  # noqa: E402
from torch.distributions import Gamma, Independent, Normal, Poisson, Uniform  # noqa: E402
from training_ablation import _parse_settings  # noqa: E402  (key=JSON settings)

from smcwake import Model, fit  # noqa: E402
from smcwake.train import TrainConfig  # noqa: E402

RESULTS = ROOT / "docs" / "results" / "training-speed.jsonl"
DOC = ROOT / "docs" / "RESULTS.md"
DIM, NOISE_SD, NUM_OBSERVATIONS = 10, 0.32, 100
DRAWS = 256  # exact posterior draws per observation for the forward KL
CPU_MARKS = (1, 2, 3, 5, 10, 15, 30)  # minutes at which the curves are tabulated
TARGET_KL = 0.035  # nats: the earlier defaults' accuracy on box-10d (0.033) with a margin
PREVIOUS_DEFAULTS: dict[str, Any] = {
    "steps": 4000,
    "batch_size": 32,
    "particles_per_step": 256,
    "refresh_every": 10,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "encoder_options": {"transforms": 3, "hidden": [64, 64], "bins": 8},
}
"""The defaults of ``fit`` before this benchmark, spelled out: every row starts from them
(``--current``: from the library's defaults of the day instead)."""


# ------------------------------------------------------------------------------- the model
def box_model(n: int = NUM_OBSERVATIONS, seed: int = 0) -> tuple[Model, torch.Tensor]:
    """U[-1, 1]^10 prior, x | z ~ N(z, 0.32^2 I), n observations, as a user would write it.

    Shapes: -> x [n, 10].
    """
    prior = Independent(Uniform(-torch.ones(DIM), torch.ones(DIM)), 1)

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return Normal(z, NOISE_SD).log_prob(x[:, None, :]).sum(-1)

    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.rand(n, DIM, generator=g) - 1
    x = z + NOISE_SD * torch.randn(n, DIM, generator=g)
    return Model(prior, log_likelihood, name="box-10d"), x


def _log_mass(x: torch.Tensor) -> torch.Tensor:
    """log P(-1 <= x + sd * eps <= 1) per coordinate, for x >= 0 (both ends in the left tail
    when x > 1, where log_ndtr keeps its relative precision). Shapes: x [..., d]."""
    low, high = (-1 - x) / NOISE_SD, (1 - x) / NOISE_SD
    log_high, log_low = torch.special.log_ndtr(high), torch.special.log_ndtr(low)
    return log_high + torch.log1p(-torch.exp(log_low - log_high))


def exact_posterior(x: torch.Tensor, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` exact posterior draws per observation and their log posterior density.

    Each coordinate is N(x_i, sd^2) truncated to [-1, 1], drawn by inverting its CDF; a
    coordinate with x_i < 0 is drawn as the mirror image of the one at -x_i (so the CDF is
    inverted in the left tail, where it is accurate). Float64.

    Shapes: x [B, d] -> z [B, num, d], log_p [B, num].
    """
    x = x.double()
    sign, a = torch.where(x < 0, -1.0, 1.0), x.abs()
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(x.shape[0], num, x.shape[1], generator=g, dtype=torch.float64)
    low = torch.special.ndtr((-1 - a) / NOISE_SD)[:, None, :]
    high = torch.special.ndtr((1 - a) / NOISE_SD)[:, None, :]
    eps = torch.special.ndtri(low + u * (high - low))
    z = (a[:, None, :] + NOISE_SD * eps).clamp(-1.0, 1.0) * sign[:, None, :]
    log_p = Normal(x[:, None, :], NOISE_SD).log_prob(z) - _log_mass(a)[:, None, :]
    return z, log_p.sum(-1)


# Gamma-Poisson (the model of docs/TUTORIAL.md): two rates ~ Gamma(2, 0.5), ten Poisson counts
# of each per observation; the posterior of each rate is Gamma(2 + its counts' sum, 0.5 + 10).
GP_SHAPE, GP_RATE, GP_COUNTS = 2.0, 0.5, 10


def gamma_poisson_model(n: int = NUM_OBSERVATIONS, seed: int = 0) -> tuple[Model, torch.Tensor]:
    """The tutorial's conjugate model, n observations. Shapes: -> x [n, 20]."""
    prior = Independent(Gamma(torch.full((2,), GP_SHAPE), torch.full((2,), GP_RATE)), 1)

    def log_likelihood(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rates = z.repeat_interleave(GP_COUNTS, dim=-1)
        return Poisson(rates).log_prob(x[:, None, :]).sum(-1)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = prior.sample((n,))
        x = torch.poisson(z.repeat_interleave(GP_COUNTS, dim=-1))
    return Model(prior, log_likelihood, name="gamma-poisson"), x


def gamma_poisson_posterior(
    x: torch.Tensor, num: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact posterior draws and log densities (float64). Shapes: x [B, 20] -> [B, num, 2],
    [B, num]."""
    sums = x.double().reshape(x.shape[0], 2, GP_COUNTS).sum(-1)
    post = Gamma(GP_SHAPE + sums, GP_RATE + GP_COUNTS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        z = post.sample((num,)).transpose(0, 1)  # [B, num, 2]
    return z, post.log_prob(z.transpose(0, 1)).sum(-1).transpose(0, 1)


MODELS = {
    "box-10d": (box_model, exact_posterior),
    "gamma-poisson": (gamma_poisson_model, gamma_poisson_posterior),
}
"""Model name -> (the model and its observations, its exact posterior)."""


class ForwardKL:
    """KL(p || q) per observation by Monte Carlo over fixed exact draws. Shapes: x [B, p]."""

    def __init__(
        self, x: torch.Tensor, num: int = DRAWS, seed: int = 1, posterior=exact_posterior
    ) -> None:
        self.x = x
        self.z, self.log_p = posterior(x, num, seed)

    @torch.no_grad()
    def __call__(self, encoder) -> list[float]:
        was_training = encoder.training
        encoder.eval()
        log_q = encoder.log_prob(self.z.to(self.x.dtype), self.x).double()
        encoder.train(was_training)
        return (self.log_p - log_q).mean(-1).tolist()


# ------------------------------------------------------------------------------- runs
def _records(path: Path = RESULTS) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(
    name: str,
    settings: dict[str, Any],
    eval_every: int,
    current: bool = False,
    results: Path = RESULTS,
    model_name: str = "box-10d",
) -> dict[str, Any]:
    """Train with ``settings`` over the previous defaults (``current``: over the library's
    defaults); record the forward KL against CPU time."""
    make, posterior = MODELS[model_name]
    model, x = make()
    kl = ForwardKL(x, posterior=posterior)
    merged = settings if current else {**PREVIOUS_DEFAULTS, **settings}
    config = TrainConfig(**merged, progress=False, checkpoint_every=10**9)
    excluded = [0.0, 0.0]  # CPU and wall seconds spent evaluating (left out)
    start = (time.process_time(), time.perf_counter())
    curve: list[dict[str, Any]] = []

    def clock() -> tuple[float, float]:
        return (
            time.process_time() - start[0] - excluded[0],
            time.perf_counter() - start[1] - excluded[1],
        )

    def evaluate(step: int, encoder) -> list[float]:
        cpu, wall = clock()
        begin = (time.process_time(), time.perf_counter())
        per_obs = kl(encoder)
        curve.append(
            {
                "step": step,
                "cpu_time": cpu,
                "wall_time": wall,
                "forward_kl": statistics.fmean(per_obs),
            }
        )
        excluded[0] += time.process_time() - begin[0]
        excluded[1] += time.perf_counter() - begin[1]
        return per_obs

    def callback(step: int, encoder, row: dict) -> None:
        if step % eval_every == 0 and step < config.steps:
            evaluate(step, encoder)

    out = fit(model, x, config=config, callbacks=[callback])
    per_obs = evaluate(out.history["step"][-1], out.encoder)
    cpu, wall = clock()
    h = out.history
    record = {
        "model": model_name,
        "name": name,
        "forward_kl": statistics.fmean(per_obs),
        "cpu_time": cpu,
        "wall_time": wall,
        "settings": settings,
        "current_defaults": current,
        "steps": h["step"][-1],
        "likelihood_evals": h["likelihood_evals"][-1],
        "forward_kl_per_observation": per_obs,
        "bank_ess": [e for e in h["bank_ess"] if e is not None][-5:],
        "curve": curve,
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(  # noqa: T201
        f"{model_name} {name}: forward KL {record['forward_kl']:.4f} in {cpu / 60:.1f} CPU min "
        f"({wall / 60:.1f} wall min, {record['steps']} steps)",
        flush=True,
    )
    return record


# ------------------------------------------------------------------------------- report
def _paired(record: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
    """Mean difference of the per-observation forward KL to ``base`` and its standard error."""
    diff = [
        a - b
        for a, b in zip(
            record["forward_kl_per_observation"], base["forward_kl_per_observation"], strict=True
        )
    ]
    return statistics.fmean(diff), statistics.stdev(diff) / math.sqrt(len(diff))


def _at(curve: list[dict[str, Any]], minutes: float, previous: float) -> str:
    """The forward KL of the last evaluation within ``minutes`` of CPU time (blank once the
    run had ended by the ``previous`` mark)."""
    within = [p for p in curve if p["cpu_time"] <= 60 * minutes]
    if not within or curve[-1]["cpu_time"] <= 60 * previous:
        return ""
    return f"{within[-1]['forward_kl']:.3f}"


def _time_to(curve: list[dict[str, Any]], target: float = TARGET_KL) -> str:
    """CPU minutes of the first evaluation at or below ``target`` (evaluations are
    ``--eval-every`` steps apart, so this is an upper bound), or "not reached"."""
    hit = next((p for p in curve if p["forward_kl"] <= target), None)
    return "not reached" if hit is None else f"{hit['cpu_time'] / 60:.1f}"


def _settings(settings: dict[str, Any], current: bool = False) -> str:
    listed = ", ".join(f"`{k}={v}`" for k, v in settings.items())
    if current:  # a --current row: the library's defaults of the day it ran
        return f"the defaults of the day, {listed}" if listed else "the defaults of the day"
    return listed or "(none)"


def _model_table(records: list[dict[str, Any]], base_name: str, model: str) -> list[str]:
    """The rows of one model: summary table and curve table (the time to the target forward
    KL on box-10d only: it is that model's target)."""
    base = next((r for r in records if r["name"] == base_name), None)
    rows, curves = [], []
    for r in records:
        diff = ""
        if base is not None and r is not base:
            mean, se = _paired(r, base)
            diff = f"{mean:+.3f} ± {se:.3f}"
        rows.append(
            [
                r["name"],
                _settings(r["settings"], r.get("current_defaults", False)),
                f"{r['steps']:,}",
                f"{r['cpu_time'] / 60:.1f}",
                f"{r['forward_kl']:.3f}",
                diff,
                _time_to(r["curve"]) if model == "box-10d" else "",
                _at(r["curve"], 3, 0),
                f"{statistics.fmean(r['bank_ess']):.2f}" if r["bank_ess"] else "",
            ]
        )
        marks = zip(CPU_MARKS, (0, *CPU_MARKS[:-1]), strict=True)
        curves.append([r["name"], *(_at(r["curve"], m, prev) for m, prev in marks)])
    header = ["row", "settings", "steps", "CPU min", "forward KL", "minus base"]
    header += [f"CPU min to {TARGET_KL}", "at 3 CPU min", "bank ESS"]
    return [
        table(header, rows),
        "",
        "Forward KL at CPU minutes:",
        "",
        table(["row", *(f"{m} min" for m in CPU_MARKS)], curves),
        "",
    ]


def write(base_name: str, results: Path = RESULTS, out: Path = DOC) -> None:
    """Render every recorded run into ``out`` (differences paired with ``base_name``)."""
    records = _records(results)
    lines = [
        f"Rows start from the previous defaults ({_settings(PREVIOUS_DEFAULTS)}) and change "
        "what their settings say, except rows on 'the defaults of the day' (`--current`), which "
        "start from the library's defaults when they ran. Forward KL: mean over the 100 "
        "observations of KL(p || q), "
        f'{DRAWS} exact draws each; "minus base" is the mean difference to the row '
        f"{base_name!r} over the same observations, with its standard error. Bank ESS: mean of "
        "the last five values of `fit`'s convergence signal. "
        f'"CPU min to {TARGET_KL}": the first evaluation at or below {TARGET_KL} nats; '
        '"at 3 CPU min": the last evaluation within 3 CPU minutes. The curve tables give the '
        "forward KL of the last evaluation within each CPU budget (with a cosine schedule, a "
        "run's intermediate points are not what a shorter run would reach).",
        "",
    ]
    for model in MODELS:
        mine = [r for r in records if r.get("model", "box-10d") == model]
        if mine:
            lines += [f"**{model}**", "", *_model_table(mine, base_name, model)]
    write_section("training-speed", "\n".join(lines), out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON-lines file of runs")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one training run")
    r.add_argument("name")
    r.add_argument("--model", choices=list(MODELS), default="box-10d")
    r.add_argument("--set", action="append", help="a TrainConfig field as key=JSON value")
    r.add_argument(
        "--eval-every",
        type=int,
        default=100,
        help="steps between evaluations (a multiple of log_every)",
    )
    r.add_argument(
        "--current", action="store_true", help="over the library's defaults, not the previous"
    )
    w = sub.add_parser("write", help="render the recorded runs into docs/RESULTS.md")
    w.add_argument("--base", default="previous defaults")
    w.add_argument("--out", type=Path, default=DOC, help="the Markdown file to update")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "run":
        done = {(r.get("model", "box-10d"), r["name"]) for r in _records(args.results)}
        if (args.model, args.name) in done:
            print(f"{args.name}: already recorded, skipped", file=sys.stderr)  # noqa: T201
            return
        settings = _parse_settings(args.set)
        run_one(args.name, settings, args.eval_every, args.current, args.results, args.model)
    else:
        write(args.base, args.results, args.out)


if __name__ == "__main__":
    main()
