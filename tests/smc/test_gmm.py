"""The Gaussian mixture fitted to a weighted particle cloud: its fit, densities and draws."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from smcwake.smc import gmm
from smcwake.smc.gmm import (
    GaussianMixture,
    PreviousFits,
    _em_step,
    _first_above,
    _log_sum_components,
    _monomials,
    add_component,
    apply_component,
    component_cdf,
    component_log_prob,
    fit_mixture,
    mixture_density,
    mixture_log_prob,
    paired_density,
    remove_last_component,
    sample_mixture,
    step_log_prob,
)

DT = torch.float64


def test_fit_mixture_recovers_weighted_components():
    # two components with weights set through the particle weights, not the counts
    g = torch.Generator().manual_seed(9)
    K = 6000
    a = torch.randn(K // 2, 3, generator=g, dtype=DT) * torch.tensor([0.1, 1.0, 0.5]) - 4.0
    b = torch.randn(K // 2, 3, generator=g, dtype=DT) * 2.0 + 4.0
    z = torch.cat([a, b])[None]
    log_weights = torch.log(torch.cat([torch.full((K // 2,), 0.2), torch.full((K // 2,), 0.8)]))
    # EM run to convergence: with 10 iterations about a third of the seeds stop early here
    mix = fit_mixture(
        z, log_weights[None].to(DT), 2, generator=g, max_points=None, num_iterations=50
    )
    first = int(mix.loc[0, :, 0].argmin())
    weights = mix.log_mix[0].exp()
    # weight 0.2 of 3000 equally weighted draws each: exact; means within 4 s.e. (sd / sqrt(n))
    torch.testing.assert_close(weights[first], torch.tensor(0.2, dtype=DT), atol=1e-3, rtol=0)
    sd_a = torch.tensor([0.1, 1.0, 0.5], dtype=DT)
    assert ((mix.loc[0, first] + 4.0).abs() < 4 * sd_a / math.sqrt(K // 2)).all()
    cov = mix.scale_tril[0, first] @ mix.scale_tril[0, first].T
    # sample variances within 4 s.e. (sqrt(2 / n) relative): narrow directions stay narrow
    rel = torch.diagonal(cov) / sd_a**2 - 1
    assert (rel.abs() < 4 * math.sqrt(2 / (K // 2))).all(), rel


def test_fit_mixture_stays_finite_on_resampled_clouds_with_few_distinct_points():
    # clouds after resampling: 500 copies of ~130 distinct points, one cluster of near-copies,
    # flat directions: EM can empty a component, and rounding then left its variances
    # negative and its fit NaN, which poisoned sampling from the whole mixture
    g = torch.Generator().manual_seed(0)
    B = 200
    base = torch.randn(B, 8, 5, generator=g) * torch.tensor([1.0, 1.0, 0.01, 0.01, 0.01])
    base = torch.cat([base, base[:, :1] + 1e-4 * torch.randn(B, 120, 5, generator=g)], 1)
    pick = torch.randint(0, base.shape[1], (B, 500), generator=g)
    z = torch.gather(base, 1, pick[..., None].expand(-1, -1, 5))
    mix = fit_mixture(z, torch.randn(B, 500, generator=g) * 3, 5, generator=g)
    assert torch.isfinite(mix.loc).all()
    assert torch.isfinite(mix.scale_tril).all()
    torch.testing.assert_close(torch.logsumexp(mix.log_mix, -1), torch.zeros(B), atol=1e-5, rtol=0)
    draws, _ = sample_mixture(mix, 10, generator=g)
    assert torch.isfinite(draws).all()


# both evaluation paths (d <= M, d > M)
@pytest.mark.parametrize(("d", "m"), [(2, 3), (4, 3), (10, 3)])
def test_mixture_densities_match_torch(d, m):
    from torch.distributions import MultivariateNormal

    g = torch.Generator().manual_seed(10)
    B, K = 2, 50
    loc = torch.randn(B, m, d, generator=g, dtype=DT)
    A = torch.randn(B, m, d, d, generator=g, dtype=DT)
    tril = torch.linalg.cholesky(A @ A.mT + torch.eye(d, dtype=DT))
    log_mix = torch.log_softmax(torch.randn(B, m, generator=g, dtype=DT), -1)
    mix = GaussianMixture(log_mix, loc, tril)
    z = torch.randn(B, K, d, generator=g, dtype=DT) * 3
    comps = MultivariateNormal(loc[:, None], scale_tril=tril[:, None])  # batch [B, 1, M]
    expected = log_mix[:, None] + comps.log_prob(z[:, :, None])
    torch.testing.assert_close(component_log_prob(mix, z), expected)
    torch.testing.assert_close(mixture_log_prob(mix, z), torch.logsumexp(expected, -1))
    zero = MultivariateNormal(torch.zeros(d, dtype=DT), scale_tril=tril[:, None])
    torch.testing.assert_close(step_log_prob(z, tril), zero.log_prob(z[:, :, None]))
    # draws: the share of each component and its mean within 4 s.e.
    n = 40_000
    draws, comp = sample_mixture(mix, n, generator=g)
    for j in range(m):
        share = (comp == j).to(DT).mean(-1)
        p = log_mix[:, j].exp()
        assert ((share - p).abs() < 4 * (p * (1 - p) / n).sqrt()).all()
        sel = draws[0][comp[0] == j]
        sd = torch.diagonal(tril[0, j] @ tril[0, j].T).sqrt()
        assert ((sel.mean(0) - loc[0, j]).abs() < 4 * sd / math.sqrt(len(sel))).all()


@pytest.mark.parametrize(("d", "m"), [(2, 5), (5, 3)])  # both evaluation paths
def test_float32_mixture_densities_are_float64_ones_rounded(d, m):
    # points up to 40 sd from the locations: shifted log-densities far below the float32
    # floor of -80, and one unused component (weight 0). In float32 the densities are the
    # float64 ones up to float32 rounding: a relative error of a few eps (1.2e-7) of the
    # value, which the float32 result has anyway; the prepared mixture gives the same numbers
    g = torch.Generator().manual_seed(11)
    B, K = 3, 400
    loc = torch.randn(B, m, d, generator=g, dtype=DT) * 5
    A = torch.randn(B, m, d, d, generator=g, dtype=DT)
    tril = torch.linalg.cholesky(A @ A.mT / d + 0.1 * torch.eye(d, dtype=DT))
    log_mix = torch.log_softmax(torch.randn(B, m, generator=g, dtype=DT), -1)
    log_mix[:, -1] = -math.inf
    log_mix = log_mix - torch.logsumexp(log_mix, -1, keepdim=True)
    z = torch.randn(B, K, d, generator=g, dtype=DT) * 20
    exact = mixture_log_prob(GaussianMixture(log_mix, loc, tril), z)
    mix32 = GaussianMixture(log_mix.float(), loc.float(), tril.float())
    z32 = z.float()
    got = mixture_log_prob(mix32, z32)
    assert got.dtype == torch.float32
    # the float32 inputs are themselves rounded: compare with float64 on those same inputs
    exact32 = mixture_log_prob(GaussianMixture(*(t.double() for t in mix32)), z32.double())
    eps = torch.finfo(torch.float32).eps
    assert ((got.double() - exact32).abs() <= 4 * eps * exact32.abs().clamp_min(1)).all()
    assert (exact32 - exact).abs().max() < 1e-2  # the premise: the inputs differ by rounding
    assert (exact < -200).any()  # and some terms are far below the floor
    assert torch.equal(mixture_density(mix32).log_prob(z32), got)
    assert torch.equal(mixture_density(GaussianMixture(log_mix, loc, tril)).log_prob(z), exact)
    # a row of all -inf stays -inf in both precisions
    log_p = torch.full((1, m, 2), -math.inf, dtype=DT)
    for dtype in (torch.float32, torch.float64):
        assert (_log_sum_components(log_p, dtype) == -math.inf).all()


def test_fit_mixture_caps_components_by_particles_per_dimension():
    z = torch.randn(1, 400, 10, dtype=DT)
    mix = fit_mixture(z, torch.zeros(1, 400, dtype=DT), 16, generator=torch.Generator())
    assert mix.log_mix.shape == (1, 2)  # 400 particles, at least 20 d = 200 per component


def _clusters(shift: float, B: int, n: int, seed: int) -> torch.Tensor:
    """Five 2-d clusters of unequal size and spread (a cloud EM fits slowly from scratch);
    ``shift`` moves and narrows them, as one tempering stage does. Shapes: -> [B, n, 2]."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-6, 0], [-2, 3], [0, -4], [3, 1], [7, 5]], dtype=DT) * (1 + shift)
    spread = torch.tensor([0.3, 1.5, 0.6, 1.0, 0.2], dtype=DT) * (1 - shift)
    share = torch.tensor([0.05, 0.35, 0.1, 0.4, 0.1], dtype=DT)
    which = torch.multinomial(share, B * n, replacement=True, generator=g).view(B, n)
    noise = torch.randn(B, n, 2, generator=g, dtype=DT)
    return centres[which] + spread[which][..., None] * noise


def test_warm_started_em_reaches_the_likelihood_of_a_cold_fit():
    # 40 clouds: each one's fit for the previous stage (ten iterations from k-means++), then
    # the next stage's moved cloud fitted cold (ten iterations from k-means++) and warm (ten
    # from the previous fit). Both are local optima of EM, and which is higher varies from
    # cloud to cloud (sd of the difference about 0.09 nats per point), so their *means* over
    # the clouds are compared: the warm one at least the cold one's less 0.05 nats (over 3
    # standard errors, 0.09 / sqrt(40)). Five iterations from scratch fall short of the warm
    # fit by 0.07 nats or more (sd 0.14, s.e. 0.022), so the warm fit must beat them by 0.02.
    g = torch.Generator().manual_seed(3)
    B, n = 40, 1000
    flat = torch.zeros(B, n, dtype=DT)
    before = fit_mixture(_clusters(0.0, B, n, 0), flat, 6, max_points=None, generator=g)
    z = _clusters(0.1, B, n, 1)
    cold = fit_mixture(z, flat, 6, max_points=None, generator=g)
    warm = fit_mixture(z, flat, 6, max_points=None, generator=g, init=before)
    short = fit_mixture(z, flat, 6, max_points=None, generator=g, num_iterations=5)
    cold_ll, warm_ll, short_ll = (mixture_log_prob(m, z).mean() for m in (cold, warm, short))
    assert warm_ll > cold_ll - 0.05, (warm_ll, cold_ll)
    assert warm_ll > short_ll + 0.02, (warm_ll, short_ll)
    # no iterations: the start is the previous fit itself, moved to whitened coordinates and back
    same = fit_mixture(z, flat, 6, max_points=None, generator=g, init=before, warm_iterations=0)
    for a, b in zip(same, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_warm_start_ignores_a_mixture_of_the_wrong_size_and_reseeds_empty_components():
    z = _clusters(0.0, 2, 1000, 0)
    flat = torch.zeros(2, 1000, dtype=DT)
    cold = fit_mixture(z, flat, 4, generator=torch.Generator().manual_seed(1))
    three = fit_mixture(z, flat, 3, generator=torch.Generator().manual_seed(2))
    ignored = fit_mixture(z, flat, 4, generator=torch.Generator().manual_seed(1), init=three)
    for a, b in zip(cold, ignored, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a component parked at weight zero is seeded afresh and takes points again
    parked = cold._replace(log_mix=cold.log_mix.clone())
    parked.log_mix[:, 0] = -math.inf
    warm = fit_mixture(z, flat, 4, generator=torch.Generator().manual_seed(3), init=parked)
    assert torch.isfinite(warm.log_mix).all()
    assert (warm.log_mix.exp() > 0.01).all()


def test_previous_fits_are_returned_only_within_one_run():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=DT)
    fit = GaussianMixture(
        torch.log(torch.full((3, 2), 0.5, dtype=DT)),
        torch.arange(3, dtype=DT)[:, None, None].expand(3, 2, 2),
        torch.eye(2, dtype=DT).expand(3, 2, 2, 2),
    )
    previous = PreviousFits()
    tau = torch.tensor([0.1, 0.2, 0.3], dtype=DT)
    assert previous.get(x, tau) is None
    previous.keep(x, tau, (fit,))
    assert previous.get(x, tau + 0.1)[0] is fit  # the same observations, further on
    assert previous.get(x, tau) is None  # not further on: a new run starts cold
    assert previous.get(x.clone(), torch.tensor([0.2, 1.0, 0.0], dtype=DT)) is None
    # observations that finished drop out: the others are matched by value
    (sub,) = previous.get(x[[2, 0]], torch.tensor([0.5, 0.5], dtype=DT))
    torch.testing.assert_close(sub.loc[:, 0, 0], torch.tensor([2.0, 0.0], dtype=DT))
    assert previous.get(x[[2, 0]] + 1, torch.ones(2, dtype=DT)) is None  # other observations
    # the defensive component added to a fit is not kept
    widened = add_component(fit, 0.05, fit.loc[:, 0], 3 * fit.scale_tril[:, 0])
    previous.keep(x, tau, (widened,), drop_last=True)
    (kept,) = previous.get(x, tau + 0.1)
    for a, b in zip(kept, remove_last_component(widened), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(kept.log_mix.exp().sum(-1), torch.ones(3, dtype=DT))


def _reference_em_step(u, weights, log_mix, loc, tril, ridge):
    """One EM iteration written plainly in float64: torch's Gaussian densities, two-pass
    covariances. Returns the log weights, means and covariances."""
    comps = MultivariateNormal(loc[:, None], scale_tril=tril[:, None])  # batch [B, 1, M]
    resp = torch.softmax(log_mix[:, None] + comps.log_prob(u[:, :, None]), -1) * weights[..., None]
    mass = resp.sum(1)  # [B, M]
    mean = (resp.mT @ u) / mass[..., None]
    centred = u[:, None] - mean[:, :, None]  # [B, M, n, d]
    cov = (resp.mT[..., None] * centred).mT @ centred / mass[..., None, None]
    own = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[..., None, None]
    cov = cov + (ridge * own + 1e-12) * torch.eye(u.shape[-1], dtype=DT)
    return torch.log(mass), mean, cov


@pytest.mark.parametrize(("d", "m"), [(2, 4), (6, 2)])  # monomials (d <= M), whitening (d > M)
def test_em_step_matches_a_float64_reference(d, m):
    # whitened points: a broad cluster and a narrow one (sd 1e-3) far from the centre, where a
    # component's covariance (1e-6) is a small difference of second moments (2.25): float32
    # sums would lose it entirely (measured: relative error 1.1), float64 sums keep it
    g = torch.Generator().manual_seed(3)
    B, n = 3, 600
    broad = torch.randn(B, n // 2, d, generator=g, dtype=DT) * 0.5 - 1.0
    narrow = torch.randn(B, n // 2, d, generator=g, dtype=DT) * 1e-3 + 1.5
    u = torch.cat([broad, narrow], 1)
    weights = torch.softmax(torch.randn(B, n, generator=g, dtype=DT), -1)
    half = m // 2
    loc = torch.cat([torch.full((B, half, d), -1.0), torch.full((B, m - half, d), 1.5)], 1)
    loc = loc.to(DT) + 0.01 * torch.randn(B, m, d, generator=g, dtype=DT)
    sds = torch.tensor([0.5] * half + [2e-3] * (m - half), dtype=DT)
    tril = sds[:, None, None] * torch.eye(d, dtype=DT).expand(B, m, d, d)
    log_mix = torch.full((B, m), -math.log(m), dtype=DT)
    features = None
    if d <= m:  # what fit_mixture passes: the monomials, weighted and not, and work space
        plain = _monomials(u)
        work = (torch.empty(B, m, n, dtype=DT), torch.empty(B, m, n, dtype=torch.float32))
        features = (plain, plain * weights[:, None, :], *work)
    log_w, mean, tril_new = _em_step(u, features, weights, log_mix, loc, tril, 1e-6)
    ref_log_w, ref_mean, ref_cov = _reference_em_step(u, weights, log_mix, loc, tril, 1e-6)
    # the responsibilities are float32: every moment is that of weights off by a relative
    # few float32 eps (1.2e-7); allowed 1e-6, relative to the component's own spread
    torch.testing.assert_close(log_w.exp(), ref_log_w.exp(), atol=1e-6, rtol=0)
    kept = ref_log_w.exp() > 1e-8  # the fit parks components below 1e-10 (weight 0)
    var = torch.diagonal(ref_cov, dim1=-2, dim2=-1)  # [B, M, d]
    assert (((mean - ref_mean).abs() / var.sqrt())[kept] < 1e-6).all()
    scale = (var[..., :, None] * var[..., None, :]).sqrt()
    assert (((tril_new @ tril_new.mT - ref_cov).abs() / scale)[kept] < 1e-6).all()
    assert var[kept].min() < 1e-5  # the premise: a narrow component far out is compared


def test_a_one_component_fit_takes_one_em_iteration(monkeypatch):
    # with one component every responsibility is 1: the first iteration gives the weighted
    # moments and every further one returns them again
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 300, 10, generator=g, dtype=DT)  # 300 points, d = 10: one component
    log_weights = torch.randn(2, 300, generator=g, dtype=DT)
    calls = []
    step = gmm._em_step
    monkeypatch.setattr(gmm, "_em_step", lambda *a: calls.append(1) or step(*a))
    once = fit_mixture(z, log_weights, 16, generator=g)
    assert once.loc.shape[1] == 1
    assert len(calls) == 1
    monkeypatch.setattr(gmm, "_em_step", step)
    _, _, u, weights = gmm._whitened_points(z, log_weights, once.scale_tril[:, 0], 4096, g)
    zero, eye = torch.zeros(2, 1, dtype=DT), torch.eye(10, dtype=DT).expand(2, 1, 10, 10)
    first = step(u, None, weights, zero, torch.zeros(2, 1, 10, dtype=DT), eye, 1e-6)
    again = step(u, None, weights, *first, 1e-6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_components_are_drawn_by_inverse_cdf_never_with_zero_weight():
    # one uniform per draw from the generator, looked up in the cumulative weights; the
    # components of weight zero (in the middle and at the end) are never drawn
    log_mix = torch.log(torch.tensor([[0.2, 0.0, 0.5, 0.3, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]]))
    mix = GaussianMixture(log_mix, torch.zeros(2, 5, 3), torch.eye(3).expand(2, 5, 3, 3))
    n = 20_000
    _, comp = sample_mixture(mix, n, generator=torch.Generator().manual_seed(5))
    u = torch.rand(2, n, generator=torch.Generator().manual_seed(5))
    assert torch.equal(comp, torch.searchsorted(component_cdf(log_mix), u, right=True))
    assert not torch.isin(comp[0], torch.tensor([1, 4])).any()
    assert (comp[1] == 2).all()
    assert component_cdf(log_mix)[0, 3:].eq(1.0).all()  # exactly 1 from the last weight on
    share = (comp[0][:, None] == torch.arange(5)).double().mean(0)
    p = log_mix[0].exp().double()
    assert ((share - p).abs() <= 4 * (p * (1 - p) / n).sqrt()).all()  # 4 binomial s.e.


@pytest.mark.parametrize("d", [2, 5])  # both evaluation paths at 4 components
def test_paired_density_is_each_half_under_its_own_mixture(d):
    g = torch.Generator().manual_seed(6)
    z = torch.randn(3, 400, d, generator=g)
    first = mixture_density(fit_mixture(z[:, 200:], torch.zeros(3, 200), 4, generator=g))
    second = mixture_density(fit_mixture(z[:, :200], torch.zeros(3, 200), 4, generator=g))
    apart = torch.cat([first.log_prob(z[:, :200]), second.log_prob(z[:, 200:])], 1)
    pair = paired_density(first, second)
    assert torch.equal(pair.log_prob(z), apart)
    rows = torch.tensor([2, 0])
    assert torch.equal(pair.select(rows).log_prob(z[rows]), apart[rows])


@pytest.mark.parametrize(("d", "m"), [(2, 9), (3, 4)])  # both ways: gather, or all products
def test_apply_component_applies_each_points_own_factor(d, m):
    g = torch.Generator().manual_seed(12)
    factors = torch.randn(2, m, d, d, generator=g, dtype=DT)
    comp = torch.randint(0, m, (2, 50), generator=g)
    v = torch.randn(2, 50, d, generator=g, dtype=DT)
    expected = torch.stack(
        [torch.stack([factors[b, comp[b, k]] @ v[b, k] for k in range(50)]) for b in range(2)]
    )
    torch.testing.assert_close(apply_component(factors, comp, v), expected)


@pytest.mark.parametrize("m", [5, 80])  # counted, or searched
def test_first_above_is_the_sorted_search(m):
    g = torch.Generator().manual_seed(13)
    weights = torch.rand(3, m, generator=g)
    weights[:, 1] = 0.0  # a component of weight zero inside, and the last two at the end
    weights[:, -2:] = 0.0
    cdf = component_cdf(torch.log(weights))
    u = torch.rand(3, 5000, generator=g)
    expected = torch.searchsorted(cdf, u, right=True)
    assert torch.equal(_first_above(cdf, u), expected)
    assert not torch.isin(expected, torch.tensor([1, m - 2, m - 1])).any()
