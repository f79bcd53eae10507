"""Gaussian mixtures fitted to weighted particle clouds, batched over observations.

The mixture-based move kernels need, for each of B observations, a density that follows every
mode of the current weighted particle cloud. :func:`fit_mixture` fits M Gaussian components by
expectation-maximization (Dempster, Laird & Rubin, 1977) with the particle weights as case
weights, all observations at once:

1. whiten the cloud with its weighted mean and covariance L L^T (the fit is affine invariant);
2. seed the means by weighted k-means++ (Arthur & Vassilvitskii, 2007): each new seed is drawn
   with probability proportional to W_k D_k^2, D_k the distance to the nearest seed;
3. alternate E-steps (responsibilities r_kj) and M-steps with weights W_k r_kj. The covariances
   are the weighted maximum-likelihood ones plus a ridge of 1e-6 times each component's own mean
   variance. The ridge is relative to the component, not to the cloud: posterior modes can be
   hundreds of times narrower than the gaps between them, and a regularization toward the
   cloud's scale (such as the conjugate prior of Fraley & Raftery, 2007, with the data
   covariance / M^(2/d) as scale) widens such modes several-fold, which ruins a proposal built
   on them. Ill-conditioning from too few points is prevented instead by the number of
   components: at most one per 20 d particles.

Large clouds are fitted on a weighted subsample (systematic resampling, ``max_points``), and the
arithmetic runs in float64 except for the responsibilities, exponentiated and normalized in
float32 (:func:`_responsibilities`). Component densities are evaluated all at once with matrix
products (:func:`component_log_prob`), choosing between an expanded quadratic form (few
dimensions) and whitening by every component (many dimensions).

The result is a :class:`GaussianMixture` in the original coordinates, with
:func:`mixture_log_prob`, :func:`component_log_prob` and :func:`sample_mixture` to evaluate and
draw from it. All draws take an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from smcwake.smc.mh import weighted_cholesky, weighted_mean
from smcwake.smc.resampling import systematic

__all__ = [
    "GaussianMixture",
    "fit_mixture",
    "component_log_prob",
    "mixture_log_prob",
    "MixtureDensity",
    "mixture_density",
    "PairedDensity",
    "paired_density",
    "log_responsibilities",
    "step_log_prob",
    "log_sum_exp",
    "apply_component",
    "component_cdf",
    "sample_mixture",
    "add_component",
    "remove_last_component",
    "PreviousFits",
    "WARM_ITERATIONS",
]


class GaussianMixture(NamedTuple):
    """B Gaussian mixtures with M components each, one per observation."""

    log_mix: Tensor  # [B, M] log mixture weights; logsumexp over M is 0 (-inf: unused)
    loc: Tensor  # [B, M, d]
    scale_tril: Tensor  # [B, M, d, d] lower Cholesky factors of the covariances


def log_sum_exp(log_p: Tensor, keepdim: bool = False, dim: int = -1) -> Tensor:
    """logsumexp over a short axis such as the components (faster than torch's there).

    Rows of all ``-inf`` give ``-inf``. Shapes: log_p [*, M] -> [*] (or [*, 1] with keepdim),
    reducing ``dim`` (the last axis by default).
    """
    top = log_p.amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    out = (log_p - top).exp_().sum(dim, keepdim=True).log_().add_(top)
    return out if keepdim else out.squeeze(dim)


def _log_sum_components(log_p: Tensor, dtype: torch.dtype) -> Tensor:
    """log sum_j exp(log_p[:, j]) over the components of float64 log-densities, in ``dtype``.

    The terms are shifted by their largest, so each exponential lies in [0, 1] and the sum in
    [1, M]. When the result is wanted in float32, the exponentials, the sum and its log are
    taken in float32 (twice as fast as float64, and the exponentials are most of the cost of
    evaluating a mixture): their relative rounding error, a few 1e-8, is of the size of the
    rounding of the float32 result itself. In a Metropolis-Hastings ratio an error e in log g
    flips an accept decision with probability at most e and changes the kernel's stationary law
    by a relative e: here about 1e-7, far below any Monte Carlo error. Shifted terms below
    ``_FLOAT32_FLOOR`` are raised to it before the exponential (exp(-80) = 2e-35 is still a
    normal float32; smaller ones make float32's exponential several times slower than
    float64's), which changes the sum by at most M e^-80. Rows of all ``-inf`` give ``-inf``.

    ``log_p`` is overwritten (a fresh tensor of its size would cost page faults).

    Shapes: log_p [B, M, K] float64 -> [B, K] in ``dtype``.
    """
    if dtype != torch.float32:
        return log_sum_exp(log_p, dim=1).to(dtype)
    top = log_p.amax(1, keepdim=True)
    finite = torch.isfinite(top)
    top = torch.where(finite, top, torch.zeros_like(top))
    shifted = log_p.sub_(top).to(torch.float32).clamp_min_(_FLOAT32_FLOOR)
    small = shifted.exp_().sum(1).log_().to(torch.float64).add_(top[:, 0])
    return torch.where(finite[:, 0], small, -math.inf).to(torch.float32)


_FLOAT32_FLOOR = -80.0
"""Least shifted log-density whose exponential is taken in float32 (:func:`_log_sum_components`,
:func:`_responsibilities`): below it float32 values turn subnormal and slow."""


def _inverse_tril(scale_tril: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse Cholesky factors L^-1 and half log-determinants of the covariances.

    Shapes: scale_tril [B, M, d, d] -> ([B, M, d, d], [B, M]).
    """
    eye = torch.eye(scale_tril.shape[-1], dtype=scale_tril.dtype, device=scale_tril.device)
    inv = torch.linalg.solve_triangular(scale_tril, eye.expand_as(scale_tril), upper=False)
    return inv, torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)


def _stacked(factors: Tensor) -> Tensor:
    """The M matrices side by side, so that ``v @ out`` applies all of them to row vectors v.

    Shapes: factors [B, M, d, d] -> [B, d, M * d], out[b, e, (j, i)] = factors[b, j, i, e].
    """
    B, M, d, _ = factors.shape
    return factors.permute(0, 3, 1, 2).reshape(B, d, M * d)


class _DensityTerms(NamedTuple):
    """What :func:`_log_density_by_component` needs of a mixture besides the points, in float64.

    Computed once per mixture by :func:`_density_terms` and reused for every batch of points
    (a move that proposes from a fixed mixture evaluates it at every step).
    """

    center: Tensor  # [B, 1, d] subtracted from the points
    mu: Tensor  # [B, M, d] the locations, centred
    # d <= M: [B, M, F] the coefficients of the points' monomials (_monomial_coefficients),
    # which include every other term; else [B, M * d, d], every L_j^-1 stacked by rows
    quadratic: Tensor
    const: Tensor | None  # [B, M] log-determinant and normalizing terms (d > M)
    shift: Tensor | None  # [B, M, d] L^-1 mu (d > M)
    log_mix: Tensor | None  # [B, M] log mixture weights to add, if any (d > M)

    def select(self, rows: Tensor) -> _DensityTerms:
        """The terms of the observations ``rows``. Shapes: rows [b] int64."""
        return _DensityTerms(*(None if t is None else t[rows] for t in self))


def _density_terms(
    loc: Tensor, scale_tril: Tensor, log_mix: Tensor | None = None
) -> _DensityTerms:
    """The per-mixture part of :func:`_log_density_by_component` (see there).

    Shapes: loc [B, M, d], scale_tril [B, M, d, d], log_mix [B, M] -> _DensityTerms.
    """
    d, M = loc.shape[-1], loc.shape[1]
    f64 = torch.float64
    center = loc.to(f64).mean(1, keepdim=True)  # [B, 1, d]
    mu = loc.to(f64) - center  # [B, M, d]
    if d <= M:
        log_mix = mu.new_zeros(mu.shape[:2]) if log_mix is None else log_mix.to(f64)
        coefficients = _monomial_coefficients(log_mix, mu, scale_tril.to(f64))
        return _DensityTerms(center, mu, coefficients, None, None, None)
    inv, half_log_det = _inverse_tril(scale_tril.to(f64))
    const = 2 * half_log_det + d * math.log(2 * math.pi)  # [B, M]
    shift = (inv @ mu[..., None])[..., 0]
    B, M, d, _ = inv.shape
    return _DensityTerms(center, mu, inv.reshape(B, M * d, d), const, shift, log_mix)


def _log_density_by_component(
    z: Tensor,
    loc: Tensor | None = None,
    scale_tril: Tensor | None = None,
    log_mix: Tensor | None = None,
    *,
    terms: _DensityTerms | None = None,
) -> Tensor:
    """log N(z_k; loc_j, L_j L_j^T) (plus log_mix_j if given) for every component and point,
    as a float64 tensor [B, M, K] with the points on the last axis.

    Two equivalent evaluations of the quadratic form |L_j^-1 (z_k - mu_j)|^2, chosen by cost.
    With few dimensions (d <= M) it is expanded, z^T P z - 2 mu^T P z + mu^T P mu with P the
    precision: one product of the points' monomials [z_i z_j, z, 1] (:func:`_monomials`) with
    coefficients that hold every other term, log_mix included. Otherwise every
    L_j^-1 is applied to every point by one matrix product [M d, d] x [d, K]. Both are taken
    about the mean of the locations, in float64, which keeps the cancellation error far below
    the form for any realistic spread. ``terms``: the mixture's part, computed beforehand by
    :func:`_density_terms` (then ``loc``, ``scale_tril`` and ``log_mix`` are not read).

    The [B, M, K] layout makes the big products long and thin the fast way round, and the
    result is finished in place: with many points these tensors are megabytes, and every fresh
    one costs the operating system's page faults as much again as the arithmetic. With many
    dimensions the whitened points are kept [B, M, d, K], shifted and squared in place and
    summed over d, a middle axis (torch reduces over a short last axis several times slower):
    1.5 to 1.8 times faster than whitening into [B, K, M, d] (d = 5 and 10, 2 or 3 components).

    Shapes: z [B, K, d], loc [B, M, d], scale_tril [B, M, d, d], log_mix [B, M] -> [B, M, K].
    """
    if terms is None:
        terms = _density_terms(loc, scale_tril, log_mix)
    B, K, d = z.shape
    M = terms.mu.shape[1]
    u = z.to(torch.float64) - terms.center
    if d <= M:
        return terms.quadratic @ _monomials(u)  # [B, M, K]
    white = (terms.quadratic @ u.mT).view(B, M, d, K).sub_(terms.shift[..., None])
    out = white.square_().sum(2)  # [B, M, K]
    out.add_(terms.const[..., None]).mul_(-0.5)
    if terms.log_mix is not None:
        out.add_(terms.log_mix.to(torch.float64)[..., None])
    return out


def _gaussian_log_prob(z: Tensor, loc: Tensor, scale_tril: Tensor) -> Tensor:
    """log N(z_k; loc_j, L_j L_j^T) for every particle and component, in the dtype of z.

    Shapes: z [B, K, d], loc [B, M, d], scale_tril [B, M, d, d] -> [B, K, M].
    """
    return _log_density_by_component(z, loc, scale_tril).to(z.dtype).mT


def step_log_prob(step: Tensor, scale_tril: Tensor) -> Tensor:
    """log N(step_k; 0, L_j L_j^T) for every step and component.

    Shapes: step [B, K, d], scale_tril [B, M, d, d] -> [B, K, M].
    """
    zero = torch.zeros_like(scale_tril[..., 0])  # [B, M, d]
    return _gaussian_log_prob(step, zero, scale_tril)


def apply_component(factors: Tensor, component: Tensor, v: Tensor) -> Tensor:
    """factors[b, component[b, k]] @ v[b, k] for every point: one matrix per point, chosen.

    Shapes: factors [B, M, d, d], component [B, K] int64, v [B, K, d] -> [B, K, d].
    """
    B, M, d, _ = factors.shape
    K = v.shape[1]
    if 4 * d < M:  # a batched matrix-vector product: 3 times faster than multiply-and-sum at d = 2
        chosen = torch.gather(factors, 1, component[..., None, None].expand(B, K, d, d))
        return (chosen @ v[..., None])[..., 0]
    # all M products in one matrix product, then pick one: as fast as the above at d = 2 with
    # 13 components, 2.4 times faster at d = 5 with 6 (B = 32, 500 points)
    every = (v @ _stacked(factors)).view(B, K, M, d)
    return torch.gather(every, 2, component[..., None, None].expand(B, K, 1, d))[:, :, 0]


def component_log_prob(mixture: GaussianMixture, z: Tensor) -> Tensor:
    """log pi_j + log N(z; mu_j, Sigma_j) for each component j.

    Shapes: z [B, K, d] -> [B, K, M].
    """
    return mixture.log_mix[:, None, :] + _gaussian_log_prob(z, mixture.loc, mixture.scale_tril)


def mixture_log_prob(mixture: GaussianMixture, z: Tensor) -> Tensor:
    """Log density of the mixture. Shapes: z [B, K, d] -> [B, K].

    >>> mix = GaussianMixture(torch.zeros(1, 1), torch.zeros(1, 1, 2), torch.eye(2)[None, None])
    >>> round(float(mixture_log_prob(mix, torch.zeros(1, 1, 2))), 4)  # -log(2 pi)
    -1.8379
    """
    # summed over the components in the [B, M, K] layout
    log_p = _log_density_by_component(z, mixture.loc, mixture.scale_tril, mixture.log_mix)
    return _log_sum_components(log_p, z.dtype)


class MixtureDensity(NamedTuple):
    """A mixture prepared for many evaluations and draws (:func:`mixture_density`).

    Its cumulative component probabilities and the float64 terms of its component densities
    (precisions or inverse Cholesky factors, log-determinants) are computed once instead of
    at every call: a move proposing from a fixed mixture evaluates and samples it at every
    step. The results are those of :func:`mixture_log_prob` and :func:`sample_mixture`.
    """

    mixture: GaussianMixture
    cdf: Tensor  # [B, M] the components' cumulative probabilities (:func:`component_cdf`)
    terms: _DensityTerms

    def select(self, rows: Tensor) -> MixtureDensity:
        """The mixtures of the observations ``rows``. Shapes: rows [b] int64."""
        return MixtureDensity(
            GaussianMixture(*(t[rows] for t in self.mixture)),
            self.cdf[rows],
            self.terms.select(rows),
        )

    def log_prob(self, z: Tensor) -> Tensor:
        """As :func:`mixture_log_prob`. Shapes: z [B, K, d] -> [B, K]."""
        log_p = _log_density_by_component(z, terms=self.terms)
        return _log_sum_components(log_p, z.dtype)

    def sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        """n draws per observation, as :func:`sample_mixture`'s. Shapes: -> [B, n, d]."""
        return sample_mixture(self.mixture, n, generator=generator, cdf=self.cdf)[0]


def mixture_density(mixture: GaussianMixture) -> MixtureDensity:
    """``mixture`` with what its density and its draws need computed once.

    Shapes: mixture with [B, M] components -> MixtureDensity.

    >>> mix = GaussianMixture(torch.zeros(1, 1), torch.zeros(1, 1, 2), torch.eye(2)[None, None])
    >>> round(float(mixture_density(mix).log_prob(torch.zeros(1, 1, 2))), 4)  # -log(2 pi)
    -1.8379
    """
    terms = _density_terms(mixture.loc, mixture.scale_tril, mixture.log_mix)
    return MixtureDensity(mixture, component_cdf(mixture.log_mix), terms)


class PairedDensity(NamedTuple):
    """Two prepared mixtures per observation, each serving one half of the particles
    (:func:`paired_density`): the density of every particle under its half's mixture in one
    evaluation instead of two and a join."""

    terms: _DensityTerms  # every field [B, 2, ...]: the first mixture's, then the second's

    def select(self, rows: Tensor) -> PairedDensity:
        """The pairs of the observations ``rows``. Shapes: rows [b] int64."""
        return PairedDensity(self.terms.select(rows))

    def log_prob(self, z: Tensor) -> Tensor:
        """log m_1(z_k) for k < K / 2, log m_2(z_k) for the others.

        Shapes: z [B, K, d] (K even) -> [B, K].
        """
        B, K, d = z.shape
        flat = _DensityTerms(*(None if t is None else t.flatten(0, 1) for t in self.terms))
        log_p = _log_density_by_component(z.reshape(2 * B, K // 2, d), terms=flat)
        return _log_sum_components(log_p, z.dtype).reshape(B, K)


def paired_density(first: MixtureDensity, second: MixtureDensity) -> PairedDensity:
    """``first`` for the first half of the particles, ``second`` for the second half.

    Shapes: two prepared mixtures with [B, M] components each -> PairedDensity.
    """
    return PairedDensity(
        _DensityTerms(
            *(
                None if a is None else torch.stack([a, b], 1)
                for a, b in zip(first.terms, second.terms, strict=True)
            )
        )
    )


def log_responsibilities(mixture: GaussianMixture, z: Tensor) -> Tensor:
    """log r_j(z) = log pi_j N_j(z) - log sum_i pi_i N_i(z). Shapes: z [B, K, d] -> [B, K, M]."""
    log_p = component_log_prob(mixture, z)
    return log_p - log_sum_exp(log_p, keepdim=True)


def component_cdf(log_mix: Tensor) -> Tensor:
    """The cumulative component probabilities, for :func:`sample_mixture`'s inverse-CDF draws.

    Divided by their last entry, so every entry from the last component of positive weight on
    is exactly 1: a uniform draw in [0, 1) then never lands on a trailing component of weight
    zero.

    Shapes: log_mix [B, M] -> [B, M].
    """
    cdf = torch.softmax(log_mix, -1).cumsum(-1)
    return cdf / cdf[:, -1:]


def _first_above(cdf: Tensor, u: Tensor) -> Tensor:
    """For each u, the first component j with cdf_j > u (u < 1, the last entry of every row).

    That is ``searchsorted(cdf, u, right=True)``; with few components it is counted instead,
    u >= cdf_j summed over j, four times faster than torch's batched search (13 components,
    32 x 2000 draws). A component of weight zero repeats the entry before it, so no u lands
    on it.

    Shapes: cdf [B, M], u [B, n] -> [B, n] int64.
    """
    M = cdf.shape[1]
    if M > 64:
        return torch.searchsorted(cdf, u, right=True).clamp_max_(M - 1)
    count = torch.zeros(u.shape, dtype=torch.uint8, device=u.device)
    for j in range(M - 1):
        count += u >= cdf[:, j : j + 1]
    return count.long()


def sample_mixture(
    mixture: GaussianMixture,
    n: int,
    *,
    generator: torch.Generator | None = None,
    cdf: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw n points per observation and report the component each came from.

    Components are drawn by inverse CDF: one uniform per point, looked up in the cumulative
    probabilities (``cdf``: :func:`component_cdf` of ``mixture.log_mix``, if already computed),
    several times faster than ``torch.multinomial`` for the same draws in law.

    Shapes: -> (z [B, n, d], component [B, n] int64).
    """
    loc, tril = mixture.loc, mixture.scale_tril
    B, M, d = loc.shape
    cdf = component_cdf(mixture.log_mix) if cdf is None else cdf
    u = torch.rand(B, n, generator=generator, dtype=cdf.dtype, device=cdf.device)
    component = _first_above(cdf, u)  # [B, n]
    eps = torch.randn(B, n, d, generator=generator, dtype=loc.dtype, device=loc.device)
    chosen_loc = torch.gather(loc, 1, component[..., None].expand(-1, -1, d))
    return chosen_loc + apply_component(tril, component, eps), component


def add_component(
    mixture: GaussianMixture, weight: float, loc: Tensor, scale_tril: Tensor
) -> GaussianMixture:
    """The mixture (1 - weight) * mixture + weight * N(loc, L L^T).

    Shapes: loc [B, d], scale_tril [B, d, d] -> a mixture with M + 1 components.
    """
    if not 0.0 < weight < 1.0:
        raise ValueError(f"weight: expected a fraction in (0, 1), received {weight!r}")
    extra = torch.full_like(mixture.log_mix[:, :1], math.log(weight))
    return GaussianMixture(
        torch.cat([mixture.log_mix + math.log1p(-weight), extra], 1),
        torch.cat([mixture.loc, loc[:, None]], 1),
        torch.cat([mixture.scale_tril, scale_tril[:, None]], 1),
    )


class PreviousFits:
    """The mixtures a kernel fitted at its last call, kept to start the next call's EM from.

    Successive stages of one SMC run temper the same posterior a little further, so the
    mixture fitted to one stage's cloud is a better start for the next one's EM
    (:func:`fit_mixture`'s ``init``) than a fresh k-means++ seeding: in the same number of
    iterations it ends closer to the cloud (see :data:`WARM_ITERATIONS`). A kernel keeps its
    fits with :meth:`keep` and asks for them with :meth:`get`, which returns them only for a
    call that continues the same run: the same observations (or some of them, matched by
    their values) at a higher temperature for each. A new run starts at a lower
    temperature, so it starts cold, and seeded runs stay reproducible. A warm start only moves
    EM's starting point: the fitted proposal is still fixed before any particle moves, so
    every Metropolis-Hastings move built on it stays exact (adapting a proposal to the
    particle system, as the cloud covariance does; Beskos, Jasra, Kantas & Thiery, 2016).
    Not safe to share between threads that run at the same time.
    """

    #: matching observations by value compares at most this many numbers; beyond, cold start
    MAX_MATCH = 10_000_000

    def __init__(self) -> None:
        self._x: Tensor | None = None
        self._tau: Tensor | None = None
        self._fits: tuple[GaussianMixture, ...] = ()

    def keep(
        self, x: Tensor, tau: Tensor, fits: tuple[GaussianMixture, ...], drop_last: bool = False
    ) -> None:
        """Remember the fits made for observations x at temperatures tau, without their last
        component if ``drop_last`` (one added to the fit, see :func:`remove_last_component`).

        Shapes: x [B, p], tau [B], every fit with B rows.
        """
        fits = tuple(remove_last_component(f) for f in fits) if drop_last else tuple(fits)
        self._x, self._tau, self._fits = x, tau.detach().clone(), fits

    def get(self, x: Tensor, tau: Tensor) -> tuple[GaussianMixture, ...] | None:
        """The kept fits for the observations x (rows matched by value), or None when some
        observation was not in the last call or is not at a higher temperature now.

        Shapes: x [B', p], tau [B'] -> fits with B' rows.
        """
        old = self._x
        if old is None or old.shape[1:] != x.shape[1:] or old.device != x.device:
            return None
        if old.shape == x.shape and torch.equal(old, x):
            rows = None
        elif x.shape[0] * old.shape[0] * max(1, x[0].numel()) <= self.MAX_MATCH:
            same = (x.flatten(1)[:, None] == old.flatten(1)[None]).all(-1)  # [B', B]
            if not bool(same.any(-1).all()):
                return None
            rows = same.to(torch.int8).argmax(-1)  # the first match
        else:
            return None
        before = self._tau if rows is None else self._tau[rows]
        if not bool((tau > before).all()):
            return None
        if rows is None:
            return self._fits
        return tuple(GaussianMixture(*(t[rows] for t in fit)) for fit in self._fits)


def remove_last_component(mixture: GaussianMixture) -> GaussianMixture:
    """The mixture without its last component, the others' weights renormalized: undoes
    :func:`add_component`. Shapes: a mixture with M + 1 >= 2 components -> M components."""
    log_mix = mixture.log_mix[:, :-1]
    return GaussianMixture(
        log_mix - torch.logsumexp(log_mix, -1, keepdim=True),
        mixture.loc[:, :-1],
        mixture.scale_tril[:, :-1],
    )


def _kmeans_plus_plus(
    u: Tensor, weights: Tensor, num_components: int, generator: torch.Generator | None
) -> Tensor:
    """Weighted k-means++ seeds. Shapes: u [B, K, d], weights [B, K] -> [B, M, d]."""
    B, K, d = u.shape
    rows = torch.arange(B, device=u.device)
    seeds = []
    probs = weights
    min_sq = None
    for _ in range(num_components):
        # one draw per row by inverse CDF (torch.multinomial costs far more for one draw)
        cdf = probs.cumsum(-1)
        target = torch.rand(B, 1, generator=generator, dtype=cdf.dtype, device=u.device)
        idx = torch.searchsorted(cdf, target * cdf[:, -1:]).clamp(max=K - 1)[:, 0]  # [B]
        seed = u[rows, idx]  # [B, d]
        seeds.append(seed)
        sq = (u - seed[:, None]).square().sum(-1)  # [B, K]
        min_sq = sq if min_sq is None else torch.minimum(min_sq, sq)
        spread = weights * min_sq
        # every particle already sits on a seed (e.g. copies of a few points): draw by weight
        probs = torch.where(spread.sum(-1, keepdim=True) > 0, spread, weights)
    return torch.stack(seeds, 1)


_EMPTY_MASS = 1e-10
"""Components whose share of the weight falls below this are dropped from an EM fit."""


def _safe_cholesky(cov: Tensor) -> Tensor:
    """Cholesky factor, falling back to the square root of the diagonal where it fails.

    Rounding can leave a nearly empty component's variances slightly negative: the fallback
    floors them, so the factor is always finite.
    """
    chol, info = torch.linalg.cholesky_ex(cov)
    variances = torch.diagonal(cov, dim1=-2, dim2=-1)
    floor = torch.finfo(cov.dtype).eps * variances.abs().amax(-1, keepdim=True).clamp_min(1.0)
    diag = torch.diag_embed(torch.sqrt(variances.clamp_min(0.0) + floor))
    return torch.where((info == 0)[..., None, None], chol, diag)


def _whitened_points(
    z: Tensor,
    log_weights: Tensor,
    chol: Tensor,
    max_points: int | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The points EM is fitted to, whitened by the cloud's mean m and covariance L L^T.

    Clouds of more than ``max_points`` particles are subsampled by systematic resampling (then
    equally weighted). Zero-weight points, which may lie anywhere, are put at the centre.

    Shapes: z [B, K, d], log_weights [B, K], chol [B, d, d] -> (m [B, d], L [B, d, d],
    u [B, n, d], weights [B, n]), all float64.
    """
    K, d = z.shape[1], z.shape[2]
    f64 = torch.float64
    mean = weighted_mean(z, log_weights).to(f64)  # [B, d]
    if max_points is not None and max_points < K:
        idx = systematic(log_weights, max_points, generator=generator)  # [B, n]
        points = torch.gather(z, 1, idx[..., None].expand(-1, -1, d))
        weights = torch.full(idx.shape, 1.0 / max_points, dtype=f64, device=z.device)
    else:
        points = z
        weights = torch.softmax(log_weights.to(f64), -1)  # [B, K]
    L = chol.to(f64)
    u = torch.linalg.solve_triangular(L, (points.to(f64) - mean[:, None]).mT, upper=False).mT
    u = torch.where(weights[..., None] > 0, u, 0.0)  # zero-weight points may lie anywhere
    return mean, L, u, weights


def _monomials(u: Tensor) -> Tensor:
    """Each point's monomials up to degree two, [u_i u_j (i >= j), u, 1], points last.

    A component's log pi_j N_j(u) is linear in these (:func:`_monomial_coefficients`), and the
    M-step's sums (second moments, first moments, mass) are their responsibility-weighted
    sums: with the monomials computed once per fit, each E-step and each M-step is one matrix
    product.

    Shapes: u [B, n, d] -> [B, d (d + 1) / 2 + d + 1, n].
    """
    B, n, d = u.shape
    t = d * (d + 1) // 2
    ut = u.mT.contiguous()  # rows of n values, multiplied row by row into place
    out = u.new_empty(B, t + d + 1, n)
    for i in range(d):  # the pairs (i, 0..i) in the order of torch.tril_indices
        start = i * (i + 1) // 2
        torch.mul(ut[:, i : i + 1], ut[:, : i + 1], out=out[:, start : start + i + 1])
    out[:, t : t + d] = ut
    out[:, -1] = 1.0
    return out


def _monomial_coefficients(log_mix: Tensor, loc: Tensor, tril: Tensor) -> Tensor:
    """The coefficients c_j with log pi_j N(u; mu_j, L_j L_j^T) = c_j . m(u), m the
    :func:`_monomials`.

    With P_j the precision, the quadratic form expands into -1/2 P_j,ii u_i^2 and
    -P_j,ik u_i u_k (i > k), P_j mu_j . u and a constant that takes the normalizing terms and
    log pi_j.

    Shapes: log_mix [B, M], loc [B, M, d], tril [B, M, d, d] -> [B, M, d (d + 1) / 2 + d + 1].
    """
    d = loc.shape[-1]
    i, j = torch.tril_indices(d, d, device=loc.device)
    prec = torch.cholesky_inverse(tril)  # [B, M, d, d]
    p_mu = (prec @ loc[..., None])[..., 0]  # [B, M, d]
    half_log_det = torch.log(torch.diagonal(tril, dim1=-2, dim2=-1)).sum(-1)
    quadratic = prec[..., i, j] * torch.where(i == j, -0.5, -1.0).to(prec.dtype)
    # a weight of zero as -1e300 rather than -inf: the same zero density, without relying on
    # how a matrix product treats infinities
    log_mix = log_mix.clamp_min(-1e300)
    const = log_mix - half_log_det - 0.5 * ((loc * p_mu).sum(-1) + d * math.log(2 * math.pi))
    return torch.cat([quadratic, p_mu, const[..., None]], -1)


def _responsibilities(log_p: Tensor, scratch: Tensor | None = None) -> Tensor:
    """The responsibilities r_kj from the components' log-densities, written over them.

    The log-densities are shifted by each point's largest (in float64), then exponentiated
    and normalized over the components in float32, about twice as fast as in float64: each
    r_kj is off by a relative few 1e-8, so the M-step computes the exact weighted moments of
    the points under weights perturbed by as little. Its sums stay in float64 (the result is
    returned in float64): a covariance is a difference of second moments, and float32 sums
    would lose it for a narrow component far from the cloud's centre. Shifted values below
    ``_FLOAT32_FLOOR`` are raised to it, so that every float32 value stays a normal number
    (exponentials and conversions of subnormal ones run many times slower); a component that
    far from a point gets a responsibility of e^-80 instead of less, far below anything the
    fit resolves. ``scratch``: a float32 tensor of the same shape to work in (a fit reuses
    one across its iterations: a fresh tensor of this size costs page faults of the order of
    the arithmetic).

    Shapes: log_p [B, M, n] float64 -> log_p, holding r.
    """
    log_p.sub_(log_p.amax(1, keepdim=True))
    r = log_p.to(torch.float32) if scratch is None else scratch.copy_(log_p)
    r.clamp_min_(_FLOAT32_FLOOR).exp_()
    return log_p.copy_(r.div_(r.sum(1, keepdim=True)))


def _m_step(
    mass: Tensor, first: Tensor, second: Tensor, relative_ridge: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and ridged covariances (as Cholesky factors) from the weighted sums of
    one E-step; empty components parked.

    Shapes: mass [B, M] (sum_k W_k r_kj), first [B, M, d], second [B, M, d, d] (the weighted
    sums of u_k and u_k u_k^T) -> (log_mix [B, M], loc [B, M, d], tril [B, M, d, d]).
    """
    d = first.shape[-1]
    f64 = torch.float64
    eye = torch.eye(d, dtype=f64, device=first.device)
    tiny = torch.finfo(f64).tiny
    absolute_ridge = 1e-12  # in whitened units, where the cloud's covariance is I
    loc = first / mass.clamp_min(tiny)[..., None]
    scatter = second - mass[..., None, None] * (loc[..., :, None] * loc[..., None, :])
    cov = scatter / mass.clamp_min(tiny)[..., None, None]
    # a ridge relative to the component's own scale (and a tiny absolute one): it keeps a
    # component spanned by fewer than d + 1 distinct points regular without widening narrow
    # modes, whatever their size and shape relative to the cloud
    own = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    cov = cov + (relative_ridge * own + absolute_ridge) * eye
    tril = _safe_cholesky(0.5 * (cov + cov.mT))
    # a component that lost (nearly) all its points: its moments are rounding noise; park
    # it, finite, at weight zero, so it can neither poison the others nor be proposed from
    alive = mass > _EMPTY_MASS
    loc = torch.where(alive[..., None], loc, 0.0)
    tril = torch.where(alive[..., None, None], tril, eye)
    log_mix = torch.where(alive, torch.log(mass.clamp_min(tiny)), -math.inf)
    return log_mix, loc, tril


def _em_step(
    u: Tensor,
    features: tuple[Tensor, Tensor, Tensor, Tensor] | None,
    weights: Tensor,
    log_mix: Tensor,
    loc: Tensor,
    tril: Tensor,
    relative_ridge: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """One EM iteration on whitened, weighted points: E-step, then the M-step's weights,
    means and ridged covariances (as Cholesky factors); empty components are parked.

    ``features``: the points' :func:`_monomials`, the same times the points' weights, and
    two [B, M, n] tensors to work in, float64 and float32; or None to whiten the points by
    every component instead (when the features, of size d^2 / 2, would outweigh that).

    Shapes: u [B, n, d], weights [B, n], log_mix [B, M], loc [B, M, d], tril [B, M, d, d]
    -> (log_mix, loc, tril) of the same shapes.
    """
    B, n, d = u.shape
    M = loc.shape[1]
    if features is not None:
        plain, weighted, log_p, scratch = features
        torch.bmm(_monomial_coefficients(log_mix, loc, tril), plain, out=log_p)  # [B, M, n]
        resp = _responsibilities(log_p, scratch)
        sums = weighted @ resp.mT  # [B, F, M]: second moments, first moments, mass
        t = d * (d + 1) // 2
        i, j = torch.tril_indices(d, d, device=u.device)
        second = sums.new_empty(B, M, d, d)
        second[..., i, j] = sums[:, :t].mT
        second[..., j, i] = sums[:, :t].mT
        return _m_step(sums[:, -1], sums[:, t : t + d].mT, second, relative_ridge)
    # u is centred on the cloud's mean and whitened: no recentring
    resp = _responsibilities(_log_density_by_component(u, loc, tril, log_mix))
    resp.mul_(weights[:, None, :])  # W_k r_kj
    # [B, M * d, n], points last: a broadcast product over a short last axis (d) is several
    # times slower per element in torch than one over the points (1.5 times over both lines
    # at d = 10, the same numbers)
    weighted = (resp[:, :, None, :] * u.mT.contiguous()[:, None]).flatten(1, 2)
    second = (weighted @ u).unflatten(1, (M, d))  # sum_k W_k r_kj u_k u_k^T
    return _m_step(resp.sum(2), resp @ u, second, relative_ridge)


WARM_ITERATIONS = 10
"""EM iterations of :func:`fit_mixture` started from a previous fit (``init``): as many as
from a k-means++ seeding.

What the warm start buys is a better fit, not fewer iterations: on squares-5d (B = 32,
K = 1000) the mixture jumps accepted 0.60 of their proposals instead of 0.56 and the run made
29% fewer likelihood evaluations. Fewer iterations did save time but cost the modes their
balance: on the SLCP model (``tests/smc/test_multimodal.py``, K = 5000, 10 observations, 4
seeds) five warm iterations left the worst mode mass 3.1 to 9.0 binomial standard errors off
(mean squared standardized error 1.2 to 4.1), ten 2.0 to 3.6 (0.9 to 1.7), as the cold fit
(2.3 to 3.5; 0.9 to 1.4). A warm start lags behind modes that move and bend from stage to
stage, and a few iterations do not catch up."""


def _whitened_start(
    init: GaussianMixture,
    mean: Tensor,
    L: Tensor,
    u: Tensor,
    weights: Tensor,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``init`` in the whitened coordinates of the cloud (mean m, covariance L L^T), as EM's
    starting point. A component of weight zero (dropped by an earlier fit) is seeded afresh at
    a point drawn by weight, with the cloud's volume split M ways, at weight 1 / M.

    Shapes: init with [B, M] components, mean [B, d], L [B, d, d], u [B, n, d], weights [B, n]
    -> (log_mix [B, M], loc [B, M, d], tril [B, M, d, d]), float64.
    """
    B, M, d = init.loc.shape
    f64 = torch.float64
    loc = torch.linalg.solve_triangular(
        L, (init.loc.to(f64) - mean[:, None]).mT, upper=False
    ).mT  # L^-1 (mu_j - m)
    tril = torch.linalg.solve_triangular(L[:, None], init.scale_tril.to(f64), upper=False)
    log_mix = init.log_mix.to(f64)
    fresh = ~torch.isfinite(log_mix) | ~torch.isfinite(loc).all(-1)
    fresh |= ~torch.isfinite(tril).flatten(-2).all(-1)
    if bool(fresh.any()):
        idx = systematic(torch.log(weights), M, generator=generator)  # [B, M]
        seeds = torch.gather(u, 1, idx[..., None].expand(-1, -1, d))
        eye = torch.eye(d, dtype=f64, device=u.device)
        loc = torch.where(fresh[..., None], seeds, loc)
        tril = torch.where(fresh[..., None, None], eye / M ** (1.0 / d), tril)
        log_mix = torch.where(fresh, -math.log(M), log_mix)
    return log_mix - torch.logsumexp(log_mix, -1, keepdim=True), loc, tril


def fit_mixture(
    z: Tensor,
    log_weights: Tensor,
    num_components: int,
    *,
    num_iterations: int = 10,
    relative_ridge: float = 1e-6,
    max_points: int | None = 4096,
    chol: Tensor | None = None,
    generator: torch.Generator | None = None,
    init: GaussianMixture | None = None,
    warm_iterations: int = WARM_ITERATIONS,
) -> GaussianMixture:
    """Fit a Gaussian mixture to each weighted particle cloud by regularized, weighted EM.

    Args:
        z: particles.
        log_weights: their log-weights (unnormalized; ``-inf`` is a zero weight).
        num_components: M, the number of components per observation; fewer (at least one) when
            the cloud has under 20 d particles per component.
        num_iterations: EM iterations after the k-means++ seeding. Ten can stop short of
            convergence when clusters differ much in weight and spread (a component may still
            straddle two of them); a kernel proposing from the fit stays exact, only its
            acceptance suffers.
        relative_ridge: added to each covariance times its mean variance (times I).
        max_points: clouds of more particles are fitted on this many, drawn from the weighted
            cloud by systematic resampling (None: always use every particle).
        chol: the Cholesky factor of the weighted cloud covariance, if already computed.
        generator: randomness of the subsampling and the seeding.
        init: a mixture to start EM from instead of the k-means++ seeding (a warm start, e.g.
            the fit to the previous stage's cloud); used only when it has the M components
            this fit would have, else ignored. Its components of weight zero are seeded afresh.
        warm_iterations: EM iterations after a warm start (at most ``num_iterations``).

    The fit runs in float64, its responsibilities in float32 (the M-step's sums in float64);
    the mixture has the dtype of ``z``.

    Shapes: z [B, K, d], log_weights [B, K] -> GaussianMixture with [B, M] components.

    References:
        Dempster, Laird & Rubin (1977), Maximum likelihood from incomplete data via the EM
        algorithm, JRSS B.
        Arthur & Vassilvitskii (2007), k-means++: the advantages of careful seeding, SODA.

    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.cat([torch.randn(1, 500, 1) - 5, torch.randn(1, 500, 1) + 5], 1)
    >>> mix = fit_mixture(z, torch.zeros(1, 1000), 2, generator=g)
    >>> sorted(round(float(m)) for m in mix.loc[0, :, 0])
    [-5, 5]
    """
    if num_components < 1:
        raise ValueError(f"num_components: expected >= 1, received {num_components}")
    if num_iterations < 0:
        raise ValueError(f"num_iterations: expected >= 0, received {num_iterations}")
    if max_points is not None and max_points < 2:
        raise ValueError(f"max_points: expected None or >= 2, received {max_points}")
    B, K, d = z.shape
    n_points = K if max_points is None else min(K, max_points)
    # at least 20 d points per component on average: full covariances estimated well enough
    # that a proposal built on them is not tighter than the cloud it describes
    M = max(1, min(num_components, n_points // (20 * d)))
    f64 = torch.float64
    if chol is None:
        chol = weighted_cholesky(z, log_weights)
    mean, L, u, weights = _whitened_points(z, log_weights, chol, max_points, generator)
    # the expanded form when its features are no larger than the [B, n, M d] of whitening the
    # points by every component, which the other form does at each iteration (measured: the
    # expanded form takes 0.67 of the time at d = 2, 12 components, 1.3 times at d = 10, 2)
    features = None
    if d * (d + 1) // 2 + d + 1 <= M * d:
        plain = _monomials(u)
        n = u.shape[1]
        work = (
            torch.empty(B, M, n, dtype=f64, device=z.device),
            torch.empty(B, M, n, dtype=torch.float32, device=z.device),
        )
        features = (plain, plain * weights[:, None, :], *work)
    if M == 1:  # one component: the first iteration gives the weighted moments, a fixed point
        num_iterations = min(num_iterations, 1)
    if init is not None and tuple(init.loc.shape) == (B, M, d):
        log_mix, loc, tril = _whitened_start(init, mean, L, u, weights, generator)
        num_iterations = min(num_iterations, warm_iterations)
    else:
        eye = torch.eye(d, dtype=f64, device=z.device)
        loc = _kmeans_plus_plus(u, weights, M, generator)  # [B, M, d]
        tril = (eye / M ** (1.0 / d)).expand(B, M, d, d)  # the cloud's volume split M ways
        log_mix = torch.full((B, M), -math.log(M), dtype=f64, device=z.device)
    for _ in range(num_iterations):
        log_mix, loc, tril = _em_step(u, features, weights, log_mix, loc, tril, relative_ridge)
    return GaussianMixture(
        (log_mix - torch.logsumexp(log_mix, -1, keepdim=True)).to(z.dtype),
        (mean[:, None, :] + loc @ L.mT).to(z.dtype),
        (L[:, None] @ tril).to(z.dtype),
    )
