"""Per-observation store of SMC runs and the evidence-weighted particle views of SMC-Wake.

For observation i with runs m = 1..M, evidence estimates Zhat_m and weighted particles
(z_mk, W_mk), the estimators of -grad KL(p(z | x_i) || q(z | x_i)) are (all in log space):

- ``"a"``: -sum_m omega_m sum_k W_mk grad log q(z_mk | x_i), omega_m = Zhat_m / sum_j Zhat_j.
  Keeps every retained run's K weighted particles. ``runs_per_step`` draws that many runs
  ~ Cat(omega) per step instead (an unbiased Monte Carlo version of the same sum).
- ``"b"``: keeps R particles resampled from each run: -sum_m omega_m (1/R) sum_r grad log q(z~_mr).
- ``"c"``: the newest run only, weighted by Zhat_M / Zbar_i, Zbar_i the mean of all Zhat so far.
- ``"naive"``: the newest run only, unweighted (biased for finite K; a baseline).
- ``"pimh"``: one run per observation; a new run replaces it with probability
  min(1, Zhat_new / Zhat_current) (particle independent Metropolis-Hastings).

Memory per observation, with ``b`` bytes per float (4 for float32), d the latent dimension,
K particles per run, R resampled particles per run and M = ``max_runs``:

=========  ==================================  =====================================
estimator  stored                              bytes per observation
=========  ==================================  =====================================
a          M runs x K particles, weights and   M * K * (d + 2) * b + M * 16 + 25
           the weights' running sums
b          M runs x R particles (equal weight) M * R * d * b + M * 16 + 25
c, naive   newest run: K particles, weights    K * (d + 1) * b + 16 + 25
pimh       current run: K particles, weights   K * (d + 1) * b + 16 + 25
=========  ==================================  =====================================

(the last terms: a float64 log Zhat and an int64 creation step per retained run, then the
running log-sum of Zhat, the run count, the ring position and an exclusion flag). When more than
M runs arrive for (a) or (b), the oldest retained run is dropped; Zbar (used by (c)) averages
every run ever made, unless :meth:`ParticleBank.drop_older_than` removed outdated runs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from smcwake.smc.resampling import multinomial, normalize, systematic

__all__ = ["ParticleBank", "WeightedParticles", "ESTIMATORS", "bank_bytes_per_observation"]

ESTIMATORS = ("a", "b", "c", "naive", "pimh")


class WeightedParticles(NamedTuple):
    """A weighted particle view for a minibatch: the loss is -sum_s weights_s log q(z_s | x)."""

    z: Tensor  # [b, S, d]
    weights: Tensor  # [b, S], non-negative; rows with no run are all zero


def bank_bytes_per_observation(
    estimator: str,
    num_particles: int,
    dim: int,
    *,
    max_runs: int = 50,
    num_resampled: int = 100,
    bytes_per_float: int = 4,
) -> int:
    """The documented memory of one observation's bank entry, in bytes (see the module table)."""
    K, d, M, R, b = num_particles, dim, max_runs, num_resampled, bytes_per_float
    if estimator == "a":
        return M * K * (d + 2) * b + M * 16 + 25
    if estimator == "b":
        return M * R * d * b + M * 16 + 25
    if estimator in ("c", "naive", "pimh"):
        return K * (d + 1) * b + 16 + 25
    raise ValueError(f"estimator: expected one of {ESTIMATORS}, received {estimator!r}")


class ParticleBank:
    """SMC runs for n observations, stored as fixed-shape tensors on one device.

    Args:
        num_observations: n.
        num_particles: K particles per SMC run.
        dim: d, the latent dimension.
        estimator: which of "a", "b", "c", "naive", "pimh" the bank serves (decides what is kept).
        max_runs: M, runs retained per observation for "a" and "b".
        num_resampled: R, particles resampled from each run for "b".

    Shapes: ``add(idx [r], particles [r, K, d], log_weights [r, K], log_evidence [r])``;
    ``view(idx [b]) -> WeightedParticles(z [b, S, d], weights [b, S])``.

    >>> bank = ParticleBank(3, num_particles=4, dim=2, estimator="c")
    >>> bank.add(torch.tensor([0, 2]), torch.zeros(2, 4, 2), torch.full((2, 4), -1.386),
    ...          torch.tensor([0.0, -1.0], dtype=torch.float64))
    >>> bank.has_runs.tolist()
    [True, False, True]
    >>> bank.view(torch.tensor([0, 1])).weights.sum(-1)
    tensor([1., 0.])
    """

    def __init__(
        self,
        num_observations: int,
        num_particles: int,
        dim: int,
        *,
        estimator: str = "a",
        max_runs: int = 50,
        num_resampled: int = 100,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {ESTIMATORS}, received {estimator!r}")
        if max_runs < 1 or num_resampled < 1:
            raise ValueError("max_runs and num_resampled must be >= 1")
        self.estimator = estimator
        self.num_particles = num_particles
        self.dim = dim
        n = num_observations
        slots = max_runs if estimator in ("a", "b") else 1
        per_run = num_resampled if estimator == "b" else num_particles
        kw = {"dtype": dtype, "device": device}
        f64 = {"dtype": torch.float64, "device": device}
        self.z = torch.zeros(n, slots, per_run, dim, **kw)
        # estimator (b) keeps equally weighted draws: no per-particle weights are stored
        weight_cols = 0 if estimator == "b" else per_run
        self.log_weights = torch.full((n, slots, weight_cols), -math.inf, **kw)
        self.log_z_runs = torch.full((n, slots), -math.inf, **f64)  # retained runs
        self.created = torch.zeros(n, slots, dtype=torch.int64, device=device)  # training step
        self.log_z_sum = torch.full((n,), -math.inf, **f64)  # logsumexp of every run's log Zhat
        self.num_runs = torch.zeros(n, dtype=torch.int64, device=device)  # every run made
        self.position = torch.zeros(n, dtype=torch.int64, device=device)  # next ring slot
        self.excluded = torch.zeros(n, dtype=torch.bool, device=device)  # zero likelihood
        self._refresh_cumulative()

    def _refresh_cumulative(self, idx: Tensor | None = None, slot: Tensor | None = None) -> None:
        """Recompute ``cumulative_weights`` (every run, or the runs at ``idx, slot``).

        Estimator (a) draws particles by their cumulative weights at every training step; the
        sums are kept with the bank, updated when a run is stored, instead of re-exponentiating
        K weights for every draw. Other estimators keep none (a [n, M, 0] tensor).
        """
        if self.estimator != "a":
            self.cumulative_weights = self.log_weights[..., :0]
        elif idx is None:
            self.cumulative_weights = torch.exp(self.log_weights).cumsum(-1)
        else:
            self.cumulative_weights[idx, slot] = torch.exp(self.log_weights[idx, slot]).cumsum(-1)

    # ------------------------------------------------------------------ state
    @property
    def num_observations(self) -> int:
        return self.z.shape[0]

    @property
    def has_runs(self) -> Tensor:
        """[n] bool: observations with at least one stored run."""
        return self.num_runs > 0

    @property
    def log_zbar(self) -> Tensor:
        """[n] log of the mean evidence estimate over every run made (-inf without runs)."""
        return self.log_z_sum - torch.log(self.num_runs.clamp_min(1).to(torch.float64))

    def nbytes(self) -> int:
        """Bytes held by the bank's tensors (the checkpointed ones and the running sums)."""
        held = [*self.state_dict().values(), self.cumulative_weights]
        return sum(t.numel() * t.element_size() for t in held)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "z": self.z,
            "log_weights": self.log_weights,
            "log_z_runs": self.log_z_runs,
            "log_z_sum": self.log_z_sum,
            "num_runs": self.num_runs,
            "position": self.position,
            "excluded": self.excluded,
            "created": self.created,
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            if current.shape != value.shape:
                raise ValueError(
                    f"bank checkpoint: {key} has shape {list(value.shape)}, this bank expects "
                    f"{list(current.shape)} (different data, num_particles or estimator?)"
                )
            setattr(self, key, value.to(current.device))
        self._refresh_cumulative()

    def reset(self, idx: Tensor | None = None) -> None:
        """Forget the runs of ``idx`` (all when None), e.g. after the likelihood changed."""
        idx = slice(None) if idx is None else idx
        self.log_weights[idx] = -math.inf
        self.log_z_runs[idx] = -math.inf
        self.log_z_sum[idx] = -math.inf
        self.num_runs[idx] = 0
        self.position[idx] = 0
        self._refresh_cumulative()

    # ------------------------------------------------------------------- write
    def add(
        self,
        idx: Tensor,
        particles: Tensor,
        log_weights: Tensor,
        log_evidence: Tensor,
        *,
        generator: torch.Generator | None = None,
        step: int = 0,
    ) -> None:
        """Store one new SMC run for each observation in ``idx`` (indices must be distinct).

        ``step`` stamps the runs with the training step that made them (see
        :meth:`drop_older_than`).

        Shapes: idx [r], particles [r, K, d], log_weights [r, K] (normalized), log_evidence [r].
        """
        if idx.numel() == 0:
            return
        log_evidence = log_evidence.to(torch.float64)
        log_weights = normalize(log_weights.to(self.log_weights.dtype))
        particles = particles.to(self.z.dtype)
        if self.estimator == "b":
            anc = multinomial(log_weights, self.z.shape[2], generator=generator)
            particles = torch.gather(particles, 1, anc[..., None].expand(-1, -1, self.dim))
            log_weights = log_weights[:, :0]
        replace = torch.ones_like(idx, dtype=torch.bool)
        if self.estimator == "pimh":
            current = self.log_z_runs[idx, 0]
            u = torch.rand(idx.shape, generator=generator, dtype=torch.float64, device=idx.device)
            replace = (current == -math.inf) | (torch.log(u) < log_evidence - current)
        slot = self.position[idx] % self.z.shape[1]
        keep = replace[:, None, None]
        self.z[idx, slot] = torch.where(keep, particles, self.z[idx, slot])
        self.log_weights[idx, slot] = torch.where(
            keep[..., 0], log_weights, self.log_weights[idx, slot]
        )
        self.log_z_runs[idx, slot] = torch.where(replace, log_evidence, self.log_z_runs[idx, slot])
        self.created[idx, slot] = torch.where(replace, step, self.created[idx, slot])
        self._refresh_cumulative(idx, slot)
        self.position[idx] += (self.z.shape[1] > 1) * 1
        self.log_z_sum[idx] = torch.logaddexp(self.log_z_sum[idx], log_evidence)
        self.num_runs[idx] += 1

    def drop_older_than(self, step: int) -> int:
        """Forget runs made before training step ``step``; returns how many were dropped.

        For models whose likelihood is learned (e.g. a decoder): runs made under an outdated
        likelihood target another posterior and their evidence estimates another p(x), so they
        are removed, and Zbar is recomputed from the runs that remain.
        """
        old = (self.created < step) & torch.isfinite(self.log_z_runs)
        dropped = int(old.sum())
        if dropped:
            self.log_z_runs = self.log_z_runs.masked_fill(old, -math.inf)
            self.log_weights = self.log_weights.masked_fill(old[..., None], -math.inf)
            self.log_z_sum = torch.logsumexp(self.log_z_runs, -1)
            self.num_runs = torch.isfinite(self.log_z_runs).sum(-1)
            self._refresh_cumulative()
        return dropped

    # -------------------------------------------------------------------- read
    def view(
        self,
        idx: Tensor,
        *,
        estimator: str | None = None,
        runs_per_step: int | None = None,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> WeightedParticles:
        """The weighted particles whose weighted score is the estimator's gradient.

        Args:
            idx: observations of the minibatch.
            estimator: defaults to the bank's own.
            runs_per_step: for "a", draw this many runs ~ Cat(omega) (None: use every run).
                Ignored when ``num_samples`` is given.
            num_samples: draw this many particles per observation in proportion to their
                weights (systematic resampling over all the estimator's weighted particles),
                each weighted by the row's total weight / num_samples: the same expected
                gradient from a fixed, small number of encoder evaluations (None: every
                weighted particle).

        Shapes: idx [b] -> z [b, S, d], weights [b, S] (S = num_samples if given).
        """
        est = estimator or self.estimator
        slots, log_run, log_row = self._run_weights(idx, est)
        if num_samples is not None:
            return self._sampled_view(idx, est, slots, log_run, log_row, num_samples, generator)
        z, lw = self.z[idx], self.log_weights[idx]
        if self.estimator == "b":  # equal weights 1/R within each stored run
            lw = torch.full(z.shape[:3], -math.log(z.shape[2]), dtype=z.dtype, device=z.device)
        b = idx.shape[0]
        if est in ("a", "b"):
            if est == "a" and runs_per_step is not None:
                usable = torch.isfinite(log_run).any(-1, keepdim=True)
                safe = torch.where(usable, log_run, 0.0)
                runs = multinomial(safe, runs_per_step, generator=generator)  # [b, R]
                z = torch.gather(z, 1, runs[..., None, None].expand(-1, -1, *z.shape[2:]))
                lw = torch.gather(lw, 1, runs[..., None].expand(-1, -1, lw.shape[-1]))
                lw = torch.where(usable[..., None], lw - math.log(runs_per_step), -math.inf)
            else:
                lw = lw + log_run[..., None].to(lw.dtype)
            return WeightedParticles(z.reshape(b, -1, self.dim), torch.exp(lw.reshape(b, -1)))
        rows = torch.arange(b, device=idx.device)
        z, lw = z[rows, slots[:, 0]], lw[rows, slots[:, 0]]
        if est == "c":
            lw = lw + log_row[:, None].to(lw.dtype)
        return WeightedParticles(z, torch.exp(lw))

    def _run_weights(self, idx: Tensor, est: str) -> tuple[Tensor, Tensor, Tensor]:
        """Which stored runs an estimator reads, and their weights.

        Returns ``slots`` [b, m] (every ring slot for "a" and "b", the newest run for the
        others), ``log_run`` [b, m] float64 (log omega, the normalized evidence weight of each
        run, for "a" and "b"; 0 otherwise) and ``log_row`` [b] float64 (the (c) factor
        log Zhat_newest - log Zbar for "c"; 0 otherwise). A particle's log weight is its
        within-run log weight + log_run + log_row.
        """
        b, M = idx.shape[0], self.z.shape[1]
        log_z = self.log_z_runs[idx]  # [b, M]
        log_row = torch.zeros(b, dtype=torch.float64, device=idx.device)
        if est in ("a", "b"):
            if est != self.estimator:
                raise ValueError(f"a bank built for {self.estimator!r} cannot serve {est!r}")
            slots = torch.arange(M, device=idx.device).expand(b, -1)
            log_run = torch.nan_to_num(normalize(log_z), nan=-math.inf)
            return slots, log_run, log_row
        newest = (self.position[idx] - 1).clamp_min(0) % M
        if est == "c":
            factor = log_z[torch.arange(b, device=idx.device), newest] - self.log_zbar[idx]
            log_row = torch.nan_to_num(factor, nan=-math.inf)
        return newest[:, None], torch.zeros(b, 1, dtype=torch.float64, device=idx.device), log_row

    def _sampled_view(
        self,
        idx: Tensor,
        est: str,
        slots: Tensor,
        log_run: Tensor,
        log_row: Tensor,
        num_samples: int,
        generator: torch.Generator | None,
    ) -> WeightedParticles:
        """``num_samples`` draws per observation from the estimator's weighted particles
        (``slots``, ``log_run``, ``log_row`` from :meth:`_run_weights`).

        Only the drawn particles are gathered, so the cost does not grow with M * K.
        """
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples: expected an integer >= 1, received {num_samples!r}")
        b = idx.shape[0]
        if est == "a":
            runs, particles = self._draw_from_runs(idx, log_run, num_samples, generator)
            z = self.z[idx[:, None], runs, particles]  # [b, S, d]
            usable = torch.isfinite(log_run).any(-1)
            weight = torch.where(usable, 1.0, 0.0) / num_samples
            return WeightedParticles(z, weight[:, None].to(z.dtype).expand(-1, num_samples))
        if est == "b":  # equal weights 1/R within each stored run
            R = self.z.shape[2]
            lw = (log_run - math.log(R))[..., None].expand(-1, -1, R)
        else:
            lw = self.log_weights[idx[:, None], slots].double() + log_run[..., None]  # [b, m, K]
        log_total = log_row  # log of the row's summed weight
        P = lw.shape[-1]
        flat = lw.reshape(b, -1)
        usable = torch.isfinite(flat).any(-1) & torch.isfinite(log_total)
        safe = torch.where(usable[:, None], flat, 0.0)
        picks = systematic(safe, num_samples, generator=generator)  # [b, S]
        runs = torch.gather(slots, 1, torch.div(picks, P, rounding_mode="floor"))
        z = self.z[idx[:, None], runs, picks % P]  # [b, S, d]
        weight = torch.where(usable, log_total, -math.inf).exp() / num_samples
        return WeightedParticles(z, weight[:, None].to(z.dtype).expand(-1, num_samples))

    def _draw_from_runs(
        self, idx: Tensor, log_run: Tensor, num_samples: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Systematic draws over every particle of every run of (a), in two levels.

        The points (s + U) / S fall in the run whose share omega_m of the cumulative evidence
        weights covers them, then in the particle of that run whose share of the run's
        cumulative weights covers the point's relative position within the run's interval:
        the same draws as systematic resampling over all M * K weights (up to rounding), with
        cumulative weights formed for the drawn runs only when S <= M (S * K weights per
        observation instead of M * K, with no pass over the rest).

        Shapes: idx [b], log_run [b, M] -> runs [b, S], particles [b, S].
        """
        b, M = log_run.shape
        usable = torch.isfinite(log_run).any(-1, keepdim=True)
        omega = torch.where(usable, torch.exp(log_run), 1.0 / M)  # [b, M], rows sum to 1
        run_cdf = omega.cumsum(-1)
        u = torch.rand(b, 1, generator=generator, dtype=torch.float64, device=idx.device)
        steps = torch.arange(num_samples, dtype=torch.float64, device=idx.device)
        points = (steps + u) / num_samples * run_cdf[:, -1:]  # [b, S]
        runs = torch.searchsorted(run_cdf, points, right=True).clamp_(max=M - 1)
        share = torch.gather(omega, 1, runs)
        start = torch.gather(run_cdf, 1, runs) - share
        within = ((points - start) / share.clamp_min(1e-300)).clamp_(0.0, 1.0)  # [b, S]
        K = self.log_weights.shape[-1]
        if num_samples <= M:  # binary search in the drawn runs' sums, read where they are kept
            start = (idx[:, None] * M + runs) * K  # [b, S] offsets of the runs' first particles
            particles = _search_rows(self.cumulative_weights.view(-1), start, K, within)
        else:  # every run's once, searched for every point; keep each point's own run
            cdf = self.cumulative_weights[idx]  # [b, M, K]
            values = within[:, None, :].to(cdf.dtype) * cdf[..., -1:]  # [b, M, S]
            found = torch.searchsorted(cdf, values, right=True)
            particles = torch.gather(found, 1, runs[:, None, :])[:, 0]
        return runs, particles.clamp_(max=K - 1)


def _search_rows(flat: Tensor, start: Tensor, length: int, within: Tensor) -> Tensor:
    """For each point, the first k with ``flat[start + k] > within * flat[start + length - 1]``.

    The rows ``flat[start : start + length]`` are non-decreasing (cumulative weights); the
    result is ``torch.searchsorted(row, within * row[-1], right=True)`` (``length`` when no
    element is larger), found by bisection with one gather per halving instead of gathering
    every row whole.

    Shapes: flat [N], start [b, S] (int64), within [b, S] -> [b, S] (int64).
    """
    values = within.to(flat.dtype) * flat[start + (length - 1)]
    lo = torch.zeros_like(start)
    hi = torch.full_like(start, length)
    for _ in range(max(1, length).bit_length()):  # the interval [lo, hi] halves each time
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        active = lo < hi
        below = flat[start + mid.clamp(max=length - 1)] <= values
        lo = torch.where(active & below, mid + 1, lo)
        hi = torch.where(active & ~below, mid, hi)
    return lo
