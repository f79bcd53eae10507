"""Adaptive choice of the next temperature, one per observation, by a safeguarded Newton search.

The tempered targets are pi_t(z) ∝ p(z) p(x | z)^{tau_t}. Going from tau to tau + delta multiplies
each particle's weight by g_k = exp(delta * loglik_k). The next temperature is the largest
tau + delta whose *conditional* effective sample size (Zhou, Johansen & Aston, 2016)

    CESS(delta) = (sum_k W_k g_k)^2 / sum_k W_k g_k^2        (a fraction of K, in (0, 1])

equals ``ess_target``. With uniform carried weights W this is the usual ESS / K; with non-uniform W
(when the previous stage did not resample) it measures only the degeneracy the new increment adds.
When CESS at delta = 1 - tau already meets the target the schedule jumps straight to 1.

CESS decreases in delta: d log CESS / d delta = 2 (m(delta) - m(2 delta)), where m(t) is the mean
log-likelihood under the weights W g^t, which increases with t. :func:`next_temperature` solves
``log(-log CESS) = log(-log ess_target)`` in s = log delta. For small delta,
log CESS = -delta^2 Var_W(loglik) + O(delta^3), so the left side is close to linear in s: the
expansion gives the first guess and Newton steps (with the exact derivative) converge in a few
iterations. Each iterate is checked against a bracket [lo, hi] with CESS(e^lo) >= target >
CESS(e^hi); a step that leaves the bracket is replaced by bisection, so the search cannot diverge.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["tempered", "conditional_ess", "next_temperature"]

# carried weights below exp(-230) (about 1e-100) of the largest do not set the reference level
_NEGLIGIBLE_LOG_WEIGHT = 230.0


def tempered(loglik: Tensor, tau: Tensor) -> Tensor:
    """``tau * loglik`` with ``0 * (-inf)`` read as 0 (a zero likelihood at temperature 0).

    Shapes: loglik [B, K], tau [B] -> [B, K].

    >>> loglik = torch.tensor([[-float("inf"), -2.0]])
    >>> tempered(loglik, torch.tensor([0.5]))
    tensor([[-inf, -1.]])
    >>> bool((tempered(loglik, torch.tensor([0.0])) == 0).all())
    True
    """
    tau = tau.to(loglik.dtype)[:, None]
    if loglik.requires_grad or tau.requires_grad:
        return torch.where(tau == 0, torch.zeros_like(loglik), tau * loglik)
    # the only NaN of the product is 0 * (-inf): a log-likelihood is never NaN or +inf here
    return torch.nan_to_num(tau * loglik, nan=0.0, posinf=math.inf, neginf=-math.inf)


def conditional_ess(loglik: Tensor, log_weights: Tensor, delta: Tensor) -> Tensor:
    """Conditional ESS fraction of the increment ``exp(delta * loglik)`` under weights W.

    Rows where every carried particle has zero likelihood give 0.

    Shapes: loglik [B, K], log_weights [B, K] (normalized), delta [B] -> [B].
    """
    inc = tempered(loglik, delta)
    log_cess = 2 * torch.logsumexp(log_weights + inc, -1) - torch.logsumexp(
        log_weights + 2 * inc, -1
    )
    return torch.nan_to_num(torch.exp(log_cess), nan=0.0)


class _LogCESS:
    """log CESS(e^s) and its derivative in s for B rows, one exponential per evaluation.

    With w_k = W_k / max W and a_k = loglik_k - loglik_ref, where loglik_ref is the largest
    log-likelihood among particles of non-negligible weight, every term w_k exp(delta a_k) of
    weight at least 1e-100 is at most 1, so nothing overflows; a particle of negligible weight
    whose term overflows would make the CESS negligible too, and the resulting inf or NaN is
    read as "below the target".

    Shapes: loglik [B, K], log_weights [B, K] (float64).
    """

    def __init__(self, loglik: Tensor, log_weights: Tensor) -> None:
        top_weight = log_weights.amax(-1, keepdim=True).clamp_min(-torch.finfo(torch.float64).max)
        w = torch.exp(log_weights - top_weight)  # [B, K] in [0, 1]
        finite = torch.isfinite(loglik) & (w > 0)
        significant = finite & (log_weights >= top_weight - _NEGLIGIBLE_LOG_WEIGHT)
        ref = torch.where(significant, loglik, -math.inf).amax(-1, keepdim=True)
        ref = torch.where(torch.isfinite(ref), ref, 0.0)
        self.a = torch.where(finite, loglik - ref, -math.inf)  # -inf: contributes 0
        self.a0 = a0 = torch.where(finite, self.a, 0.0)  # for products with terms that are 0
        # the four weighted sums of one evaluation are one batched product of the rows (t, t^2)
        # with the rows (w, w a0), both contiguous along K (3x faster than four multiply-and-sum
        # passes); t and t^2 live in a buffer reused by every evaluation
        self.weights = torch.stack([w, w * a0], 1)  # [B, 2, K]
        self._powers = torch.empty(w.shape[0], 2, w.shape[1], dtype=w.dtype, device=w.device)
        w_sum = w.sum(-1)
        self.log_w_sum = torch.log(w_sum)
        self.alive_mass = (w * finite).sum(-1)
        #: weighted share of particles with a positive likelihood: lim CESS(delta) at delta -> 0+
        self.alive = self.alive_mass / w_sum

    def first_guess(self, log_target: float) -> Tensor:
        """s solving -delta^2 Var_W(loglik) = log target, over particles of positive likelihood.

        NaN or infinite where the variance is 0 or rounds below it (the caller bisects instead).
        """
        wa = self.weights[:, 1]  # a0 is 0 where the likelihood is 0
        mean = wa.sum(-1) / self.alive_mass
        var = (wa * self.a0).sum(-1) / self.alive_mass - mean.square()
        return 0.5 * (math.log(-log_target) - torch.log(var))

    def __call__(self, s: Tensor) -> tuple[Tensor, Tensor]:
        delta = torch.exp(s)[:, None]  # [B, 1]
        t, t2 = self._powers[:, 0], self._powers[:, 1]
        torch.mul(self.a, delta, out=t).exp_()  # exp(delta a): 0 where a = -inf
        torch.mul(t, t, out=t2)
        sums = torch.bmm(self._powers, self.weights.mT)  # [B, 2, 2]: rows t, t^2; columns w, w a
        s1, s2 = sums[:, 0, 0], sums[:, 1, 0]
        log_cess = 2 * torch.log(s1) - torch.log(s2) - self.log_w_sum
        slope = 2 * delta[:, 0] * (sums[:, 0, 1] / s1 - sums[:, 1, 1] / s2)
        return log_cess, slope


def next_temperature(
    loglik: Tensor,
    log_weights: Tensor,
    tau: Tensor,
    *,
    ess_target: float = 0.5,
    min_increment: float = 1e-9,
    max_iterations: int = 30,
    rtol: float = 1e-6,
    target_ess: float | None = None,
) -> Tensor:
    """Next temperature per observation: CESS(tau_next - tau) = ess_target, capped at 1.

    A safeguarded Newton search on all rows at once, in float64 and in s = log(delta) (useful
    increments span many decades; see the module docstring). The answer is always the lower end
    of the bracket, so the achieved CESS is at least the target (within ``rtol`` relative to
    it once converged), and the step is never below ``min_increment``, which guarantees progress
    when a share of the particles has zero likelihood: if fewer than ``ess_target`` of the carried
    weight sits on particles with a positive likelihood, no increment meets the target and the
    step is ``min_increment``. The search stops when every row has converged (one host-device
    synchronization per iteration) or after ``max_iterations`` Newton or bisection steps; a row
    stopped by the cap keeps a valid, smaller step.

    ``target_ess`` is a deprecated spelling of ``ess_target`` (the name :func:`smcwake.run_smc`
    uses); it warns and will be removed in smcwake 0.2.0.

    Shapes: loglik [B, K], log_weights [B, K] (normalized), tau [B] (float64) -> [B] (float64).

    >>> ll = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    >>> next_temperature(ll, torch.full((1, 4), -1.386), torch.zeros(1, dtype=torch.float64))
    tensor([1.], dtype=torch.float64)
    """
    if target_ess is not None:
        warnings.warn(
            "next_temperature(target_ess=...) is deprecated since smcwake 0.1.0 and will be "
            "removed in 0.2.0: pass ess_target=... (the name run_smc uses)",
            FutureWarning,
            stacklevel=2,
        )
        ess_target = target_ess
    log_cess = _LogCESS(loglik.to(torch.float64), log_weights.to(torch.float64))
    log_target = math.log(ess_target)
    # Newton aims a little inside the feasible side, so iterates land on it and the bracket's
    # lower end converges whichever side they approach from
    goal = math.log(-log_target) - 0.5 * rtol
    gap = (1.0 - tau).clamp_min(0.0)
    hi = torch.log(gap.clamp_min(min_increment))
    lo = torch.minimum(torch.full_like(hi, math.log(min_increment)), hi)
    value, _ = log_cess(hi)
    done = value >= log_target  # NaN (no mass left) reads as below the target
    resolved = done | (log_cess.alive < ess_target)
    s = log_cess.first_guess(log_target)
    s = torch.where((s > lo) & (s < hi), s, 0.5 * (lo + hi))  # NaN fails both tests
    last_step = hi - lo
    for _ in range(max_iterations):
        value, slope = log_cess(s)
        ok = value >= log_target
        lo = torch.where(ok, s, lo)
        hi = torch.where(ok, hi, s)
        # h(s) = log(-log CESS) increases in s with h' = slope / log CESS; Newton step on h
        h = torch.log(-value)
        resolved = resolved | (ok & (h >= goal - 0.5 * rtol)) | (hi - lo <= rtol)
        if bool(resolved.all()):
            break
        newton = s - (h - goal) * value / slope
        # bisect when Newton leaves the bracket or does not at least halve the last step
        # (slow progress where h bends sharply); NaN fails every test
        step = (newton - s).abs()
        take = (newton > lo) & (newton < hi) & (2 * step <= last_step)
        following = torch.where(take, newton, 0.5 * (lo + hi))
        last_step = torch.where(take, step, 0.5 * (hi - lo))
        s = following
    delta = torch.minimum(torch.exp(lo), gap)
    return torch.where(done, torch.ones_like(tau), tau + delta)
