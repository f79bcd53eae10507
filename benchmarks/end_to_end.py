"""End to end: wall time of ``smcwake.fit`` (SMC-Wake) to a quality target, batched SMC against
SMC run one observation at a time.

    python benchmarks/end_to_end.py                      # both tasks, both variants trained
                                                         # (about 20 minutes)
    python benchmarks/end_to_end.py --loop extrapolate   # time the loop variant's SMC calls only

The two variants are the same training (``fit`` with the same settings and seed) except for
``smc_batch_size``: 256 (every SMC call takes all its observations at once) against 1 (the
initial SMC and every refresh run their observations one at a time). Quality is checked every
``eval_every`` steps (the checks are not counted in the wall times). The batched run stops at the
first check that meets the target; the loop variant then trains for exactly as many steps, so
both follow the same schedule of steps and refreshes (their random draws differ, so their
metrics at that step differ a little).

- two-moons (100 observations, NSF encoder, K = 1000, minibatch 32, one run drawn per step, a
  refresh of 32 observations every 10 steps): target C2ST < 0.6, averaged over the first 10
  observations, 1000 encoder draws against 1000 draws of the task's grid reference.
- linear-gaussian with d = 10, p = 20 (50 observations, full-rank Gaussian encoder, K = 100,
  minibatch 32, 4 runs drawn per step, a refresh of 32 every 10 steps): target mean forward
  KL(posterior || q) < 0.5 nats over the 50 observations, against the exact posterior. (At the
  task's default d = 50, K = 100 the SMC clouds are too degenerate for the encoder to approach
  the exact posterior in a benchmark's time.)

With ``--loop extrapolate`` the loop variant is not trained: its time is the batched run's time
with the SMC part replaced by (observations sent to SMC) x (time of one single-observation call),
the latter measured on the run's own observations.
"""

from __future__ import annotations

import time

import torch
from _common import best_of, parser, setup, table, write_section

import smcwake
import smcwake.loop
from smcwake import run_smc
from smcwake.diagnostics import c2st, forward_kl_gaussian
from smcwake.tasks import get

SETTINGS = {
    "two-moons": {
        "task": {},
        "n": 100,
        "fit": {
            "encoder": "nsf",
            "num_particles": 1000,
            "batch_size": 32,
            "runs_per_step": 1,
            "refresh_every": 10,
            "lr": 1e-3,
        },
        "metric": "C2ST",
        "target": 0.6,
        "eval_every": 250,
        "max_steps": 5000,
    },
    "linear-gaussian": {
        "task": {"d": 10, "p": 20},
        "n": 50,
        "fit": {
            "encoder": "gaussian",
            "num_particles": 100,
            "batch_size": 32,
            "runs_per_step": 4,
            "refresh_every": 10,
            "lr": 1e-3,
        },
        "metric": "forward KL",
        "target": 0.5,
        "eval_every": 50,
        "max_steps": 3000,
    },
}


class SMCTimer:
    """Wraps the run_smc used by fit (in smcwake.loop) to add up its wall time and the
    observations sent."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.observations = 0
        self.calls = 0
        self._original = smcwake.loop.run_smc

    def __enter__(self) -> SMCTimer:
        def timed(model, x, *args, **kwargs):
            start = time.perf_counter()
            result = self._original(model, x, *args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.observations += x.shape[0]
            self.calls += 1
            return result

        smcwake.loop.run_smc = timed
        return self

    def __exit__(self, *exc) -> None:
        smcwake.loop.run_smc = self._original


def quality(name: str, task, x):
    """A function encoder -> metric (lower is better)."""
    if name == "two-moons":
        xe = x[:10]
        reference = task.reference_posterior(xe, 1000, 1)

        def c2st_mean(encoder) -> float:
            with torch.no_grad():
                q = encoder.sample(xe, 1000, generator=torch.Generator().manual_seed(2))
            return sum(c2st(reference[i], q[i]) for i in range(xe.shape[0])) / xe.shape[0]

        return c2st_mean
    post_mean, post_cov = task.posterior_moments(x)

    def forward_kl(encoder) -> float:
        with torch.no_grad():
            q_mean, q_cov = encoder.gaussian_params(x)
        kl = forward_kl_gaussian(post_mean.double(), post_cov.double(), q_mean.double(), q_cov)
        return float(kl.mean())

    return forward_kl


def train(name: str, smc_batch_size: int, steps: int | None = None) -> dict:
    """One fit; wall times exclude the quality checks.

    Without ``steps``, stops at the first check that meets the target (or ``max_steps``); with
    ``steps``, runs exactly that many steps.
    """
    s = SETTINGS[name]
    task = get(name, **s["task"])
    _, x = task.observations(s["n"], 0)
    metric = quality(name, task, x)
    curve: list[tuple[int, float, float]] = []
    checks = [0.0]

    def check(step, encoder, row):
        if step % s["eval_every"]:
            return None
        start = time.perf_counter()
        value = metric(encoder)
        curve.append((step, row["wall_time"] - checks[0], value))
        checks[0] += time.perf_counter() - start
        print(f"  step {step}: {s['metric']} {value:.3f}, {curve[-1][1]:.0f} s", flush=True)
        return steps is None and value < s["target"]

    with SMCTimer() as smc:
        start = time.perf_counter()
        smcwake.fit(
            task.model,
            x,
            **s["fit"],
            steps=steps or s["max_steps"],
            smc_batch_size=smc_batch_size,
            log_every=s["eval_every"],
            progress=False,
            seed=0,
            callbacks=[check],
        )
        total = time.perf_counter() - start - checks[0]
    reached = [c for c in curve if c[2] < s["target"]]
    first = reached[0] if reached else None
    return {
        "task": task,
        "x": x,
        "first": first,  # (step, seconds, value) of the first check meeting the target
        "steps": curve[-1][0],
        "value": curve[-1][2],
        "seconds": total,
        "smc_seconds": smc.seconds,
        "smc_observations": smc.observations,
    }


def single_call_seconds(name: str, task, x, refresh: int, repeats: int) -> tuple[float, float]:
    """(seconds per observation run alone, seconds per observation in one batched call)."""
    K = SETTINGS[name]["fit"]["num_particles"]
    xs = x[:refresh]

    def alone():
        g = torch.Generator().manual_seed(3)
        for b in range(xs.shape[0]):
            with torch.no_grad():
                run_smc(task.model, xs[b : b + 1], K, generator=g)

    def batched():
        with torch.no_grad():
            run_smc(task.model, xs, K, generator=torch.Generator().manual_seed(3))

    best = best_of({"alone": alone, "batched": batched}, repeats)
    return best["alone"] / xs.shape[0], best["batched"] / xs.shape[0]


def _fastest(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--tasks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--loop", choices=["full", "extrapolate"], default="full")
    p.add_argument("--rounds", type=int, default=1, help="alternated trainings per variant")
    args = p.parse_args()
    setup(args.threads)
    rows, notes = [], []
    for name in args.tasks:
        s = SETTINGS[name]
        batched_runs, loop_runs = [], []
        for _ in range(args.rounds):
            print(f"{name}: batched SMC, until the target", flush=True)
            batched_runs.append(train(name, 256))
            steps = batched_runs[-1]["steps"]
            if args.loop == "full":
                print(f"{name}: one observation per SMC call, {steps} steps", flush=True)
                loop_runs.append(train(name, 1, steps))
        b = _fastest(batched_runs)
        if args.loop == "full":
            lp = _fastest(loop_runs)
            loop_time, loop_smc = lp["seconds"], lp["smc_seconds"]
            loop_value = f"{lp['value']:.3f}"
            if lp["first"] is not None and lp["first"][0] < lp["steps"]:
                loop_value += f" (first below at step {lp['first'][0]})"
            how = "measured"
        else:
            alone, batched = single_call_seconds(
                name, b["task"], b["x"], s["fit"]["batch_size"], args.repeats
            )
            outside = b["seconds"] - b["smc_seconds"]
            loop_smc = b["smc_observations"] * alone
            loop_time, loop_value, how = outside + loop_smc, "not trained", "extrapolated"
            notes.append(
                f"{name}: the loop variant is extrapolated: {b['smc_observations']} observations "
                f"sent to SMC x {alone * 1e3:.0f} ms per single-observation call (against "
                f"{batched * 1e3:.1f} ms per observation in a batch of "
                f"{s['fit']['batch_size']}), plus the batched run's {outside:.0f} s outside SMC."
            )
        reached = b["first"] is not None
        rows.append(
            [
                name,
                f"{s['metric']} < {s['target']}",
                b["steps"],
                f"{b['value']:.3f}" + ("" if reached else " (target not reached)"),
                b["seconds"],
                b["smc_seconds"],
                loop_value,
                loop_time,
                loop_smc,
                how,
                loop_time / b["seconds"],
            ]
        )
    body = table(
        [
            "task",
            "target",
            "steps",
            "batched: metric",
            "batched: wall (s)",
            "of which SMC (s)",
            "loop: metric",
            "loop: wall (s)",
            "of which SMC (s)",
            "loop",
            "loop / batched",
        ],
        rows,
    )
    body = (
        "Both variants train for the steps the batched run needed to meet the target (same "
        f"schedule of refreshes); fastest of {args.rounds} alternated round(s). Wall times "
        "exclude the quality checks.\n\n" + body
    )
    if notes:
        body += "\n\n" + "\n".join(f"- {n}" for n in notes)
    write_section("end-to-end", body, args.out, write=not args.no_write)


if __name__ == "__main__":
    main()
