"""ParticleBank: evidence weights in log space, ring buffer, PIMH acceptance, documented memory."""

import math

import pytest
import torch

from smcwake.bank import ESTIMATORS, ParticleBank, bank_bytes_per_observation
from smcwake.smc.resampling import systematic


def _run(K: int, d: int, value: float, log_z: float, r: int = 1):
    z = torch.full((r, K, d), value)
    lw = torch.full((r, K), -math.log(K))
    return z, lw, torch.full((r,), log_z, dtype=torch.float64)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_memory_matches_documented_formula(estimator):
    n, K, d, M, R = 7, 30, 3, 5, 11
    bank = ParticleBank(n, K, d, estimator=estimator, max_runs=M, num_resampled=R)
    expected = bank_bytes_per_observation(estimator, K, d, max_runs=M, num_resampled=R)
    assert bank.nbytes() == n * expected


def test_run_weights_are_evidence_proportional_in_log_space():
    # log Zhat of -1000 and -1000 + log 3: omega = 1/4, 3/4 even though exp() underflows
    bank = ParticleBank(1, 2, 1, estimator="a", max_runs=4)
    idx = torch.tensor([0])
    bank.add(idx, *_run(2, 1, 0.0, -1000.0))
    bank.add(idx, *_run(2, 1, 1.0, -1000.0 + math.log(3)))
    view = bank.view(idx)
    assert view.z.shape == (1, 8, 1)
    torch.testing.assert_close(view.weights.sum(), torch.tensor(1.0))
    mean = (view.weights * view.z[..., 0]).sum()
    torch.testing.assert_close(mean, torch.tensor(0.75))
    torch.testing.assert_close(
        bank.log_zbar, torch.tensor([-1000 + math.log(2)], dtype=torch.float64)
    )


def test_estimator_c_factor_and_naive():
    bank = ParticleBank(1, 2, 1, estimator="c")
    idx = torch.tensor([0])
    bank.add(idx, *_run(2, 1, 0.0, math.log(1.0)))
    bank.add(idx, *_run(2, 1, 5.0, math.log(3.0)))
    c = bank.view(idx)
    # newest run weighted by Zhat_M / Zbar = 3 / 2
    torch.testing.assert_close(c.weights.sum(), torch.tensor(1.5))
    assert (c.z == 5.0).all()
    torch.testing.assert_close(bank.view(idx, estimator="naive").weights.sum(), torch.tensor(1.0))


def test_ring_buffer_keeps_newest_runs_and_all_runs_in_zbar():
    bank = ParticleBank(1, 2, 1, estimator="a", max_runs=2)
    idx = torch.tensor([0])
    for value in (1.0, 2.0, 3.0):
        bank.add(idx, *_run(2, 1, value, 0.0))
    assert sorted(bank.z[0, :, 0, 0].tolist()) == [2.0, 3.0]
    assert int(bank.num_runs[0]) == 3


def test_runs_per_step_draws_runs_by_evidence():
    # omega = (0.9, 0.1): the drawn-run estimate of the mean is 0.9 * 0 + 0.1 * 1 on average
    bank = ParticleBank(2000, 2, 1, estimator="a", max_runs=2)
    idx = torch.arange(2000)
    bank.add(idx, *_run(2, 1, 0.0, math.log(0.9), 2000))
    bank.add(idx, *_run(2, 1, 1.0, math.log(0.1), 2000))
    g = torch.Generator().manual_seed(0)
    view = bank.view(idx, runs_per_step=1, generator=g)
    assert view.z.shape == (2000, 2, 1)
    est = (view.weights * view.z[..., 0]).sum(-1)
    se = math.sqrt(0.1 * 0.9 / 2000)
    assert abs(float(est.mean()) - 0.1) < 4 * se


def test_pimh_accepts_with_evidence_ratio():
    # current Zhat = 1, proposed Zhat = 0.25: replaced with probability 1/4
    n = 4000
    bank = ParticleBank(n, 2, 1, estimator="pimh")
    idx = torch.arange(n)
    g = torch.Generator().manual_seed(1)
    bank.add(idx, *_run(2, 1, 0.0, 0.0, n), generator=g)
    bank.add(idx, *_run(2, 1, 1.0, math.log(0.25), n), generator=g)
    share = float((bank.z[:, 0, 0, 0] == 1.0).double().mean())
    assert abs(share - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    # a better run is always accepted
    bank.add(idx, *_run(2, 1, 2.0, 1.0, n), generator=g)
    assert (bank.z[:, 0, 0, 0] == 2.0).all()


def test_empty_rows_have_zero_weight_and_state_round_trips():
    bank = ParticleBank(3, 4, 2, estimator="b", num_resampled=5)
    g = torch.Generator().manual_seed(0)
    bank.add(
        torch.tensor([1]),
        torch.randn(1, 4, 2),
        torch.zeros(1, 4),
        torch.zeros(1, dtype=torch.float64),
        generator=g,
    )
    view = bank.view(torch.tensor([0, 1]))
    assert view.weights[0].sum() == 0
    torch.testing.assert_close(view.weights[1].sum(), torch.tensor(1.0))
    other = ParticleBank(3, 4, 2, estimator="b", num_resampled=5)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.view(torch.tensor([1])).z, view.z[1:])
    with pytest.raises(ValueError, match="bank checkpoint"):
        ParticleBank(4, 4, 2, estimator="b", num_resampled=5).load_state_dict(bank.state_dict())


def test_drop_older_than_removes_runs_and_recomputes_zbar():
    bank = ParticleBank(2, 2, 1, estimator="a", max_runs=4)
    bank.add(torch.tensor([0, 1]), *_run(2, 1, 0.0, 0.0, 2), step=0)
    bank.add(torch.tensor([0]), *_run(2, 1, 1.0, math.log(3.0)), step=10)
    assert bank.drop_older_than(5) == 2
    assert bank.has_runs.tolist() == [True, False]
    torch.testing.assert_close(bank.log_zbar[0], torch.tensor(math.log(3.0), dtype=torch.float64))
    view = bank.view(torch.tensor([0, 1]))
    torch.testing.assert_close(view.weights.sum(-1), torch.tensor([1.0, 0.0]))
    assert (view.z[0][view.weights[0] > 0] == 1.0).all()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_sampled_view_has_the_full_views_expectation(estimator):
    # random runs with random weights and evidences: the draws' weighted mean of z must match
    # the full view's weighted sum within 4 multinomial standard errors (systematic draws are
    # never noisier), and only rows with runs may carry weight
    g = torch.Generator().manual_seed(3)
    n, K, d, S = 4, 40, 2, 4000
    bank = ParticleBank(n, K, d, estimator=estimator, max_runs=3, num_resampled=20)
    idx = torch.arange(3)  # observation 3 never gets a run
    for _ in range(4):
        z = torch.randn(3, K, d, generator=g) * 3
        lw = torch.log_softmax(torch.randn(3, K, generator=g) * 2, -1)
        log_z = torch.randn(3, generator=g, dtype=torch.float64)
        bank.add(idx, z, lw, log_z, generator=g)
    rows = torch.arange(n)
    full = bank.view(rows)
    total = full.weights.sum(-1)
    exact = (full.weights[..., None] * full.z).sum(1)  # [n, d]
    mean_z = exact / total.clamp_min(1e-30)[:, None]
    var = (full.weights[..., None] * (full.z - mean_z[:, None]) ** 2).sum(1) / total.clamp_min(
        1e-30
    )[:, None]
    sampled = bank.view(rows, num_samples=S, generator=g)
    assert sampled.z.shape == (n, S, d)
    assert sampled.weights.shape == (n, S)
    torch.testing.assert_close(sampled.weights.sum(-1), total)
    estimate = (sampled.weights[..., None] * sampled.z).sum(1)
    se = total[:, None] * (var / S).sqrt()
    assert ((estimate - exact).abs() <= 4 * se + 1e-6).all(), (estimate, exact, se)
    assert float(sampled.weights[3].sum()) == 0.0
    with pytest.raises(ValueError, match="num_samples"):
        bank.view(rows, num_samples=0)


def _filled_bank(seed: int = 5, n: int = 6, K: int = 50, M: int = 4) -> ParticleBank:
    g = torch.Generator().manual_seed(seed)
    bank = ParticleBank(n, K, 2, estimator="a", max_runs=M)
    for _ in range(M + 2):  # the ring wraps: the oldest runs are replaced
        rows = torch.randperm(n, generator=g)[: n - 1]  # one observation lags behind
        lw = torch.log_softmax(torch.randn(n - 1, K, generator=g) * 3, -1)
        lw[:, :5] = -math.inf  # particles of zero weight are never drawn
        z = torch.randn(n - 1, K, 2, generator=g)
        bank.add(rows, z, lw, torch.randn(n - 1, generator=g, dtype=torch.float64) * 2)
    return bank


@pytest.mark.parametrize("num_samples", [3, 64])  # fewer and more draws than runs (M = 4)
def test_sampled_view_a_draws_the_flat_systematic_resample(num_samples):
    # the two-level draw of (a) must pick exactly the particles that systematic resampling over
    # all M * K weights (omega_m W_mk) picks with the same uniform
    bank = _filled_bank()
    idx = torch.tensor([4, 0, 2, 5])
    view = bank.view(idx, num_samples=num_samples, generator=torch.Generator().manual_seed(9))
    slots, log_run, _ = bank._run_weights(idx, "a")
    flat = (bank.log_weights[idx].double() + log_run[..., None]).reshape(len(idx), -1)
    picks = systematic(flat, num_samples, generator=torch.Generator().manual_seed(9))
    K = bank.log_weights.shape[-1]
    expected = bank.z[idx[:, None], picks // K, picks % K]
    torch.testing.assert_close(view.z, expected, rtol=0, atol=0)
    assert bool(
        (torch.gather(bank.log_weights[idx].reshape(len(idx), -1), 1, picks) > -1e30).all()
    )


def test_row_bisection_is_searchsorted():
    # ties (zero weights repeat a cumulative value), points at 0 and at the row's total
    from smcwake.bank import _search_rows

    g = torch.Generator().manual_seed(3)
    for length in (1, 2, 7, 64, 1000):
        w = torch.rand(5, length, generator=g, dtype=torch.float64)
        w[w < 0.3] = 0.0
        w[:, 0] = 1.0
        rows = w.cumsum(-1)
        within = torch.rand(5, 9, generator=g, dtype=torch.float64)
        within[:, 0], within[:, 1] = 0.0, 1.0
        start = (torch.arange(5) * length)[:, None].expand(-1, 9)
        found = _search_rows(rows.reshape(-1), start, length, within)
        expected = torch.searchsorted(rows, within * rows[:, -1:], right=True)
        assert torch.equal(found, expected), length


def test_cumulative_weights_follow_every_change_of_the_bank():
    bank = _filled_bank()  # runs made at step 0
    g = torch.Generator().manual_seed(4)
    rows = torch.tensor([0, 3])
    lw = torch.log_softmax(torch.randn(2, 50, generator=g), -1)
    bank.add(
        rows, torch.randn(2, 50, 2, generator=g), lw, torch.zeros(2, dtype=torch.float64), step=5
    )
    assert bank.drop_older_than(5) > 0  # every run but the two of step 5
    assert float(bank.cumulative_weights[rows].amax()) > 0.99
    state = {k: v.clone() for k, v in bank.state_dict().items()}
    for changed in (bank, _restored(state)):
        torch.testing.assert_close(
            changed.cumulative_weights, torch.exp(changed.log_weights).cumsum(-1)
        )
    bank.reset(torch.tensor([1]))
    torch.testing.assert_close(bank.cumulative_weights, torch.exp(bank.log_weights).cumsum(-1))


def _restored(state: dict) -> ParticleBank:
    bank = ParticleBank(6, 50, 2, estimator="a", max_runs=4)
    bank.load_state_dict(state)
    return bank
