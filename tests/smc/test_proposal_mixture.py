"""The proposal mixtures fitted to the cloud: their settings and what the held-out gain tells."""

import math

import pytest
import torch

from smcwake.smc.encoder_proposal import encoder_independence
from smcwake.smc.independence import mixture_independence
from smcwake.smc.multimodal import local_random_walk
from smcwake.smc.proposal_mixture import MIN_GAIN, FitSettings, cross_fit, held_out_gain

DT = torch.float64


def test_held_out_gain_tells_one_lump_from_separated_modes():
    # the gate of the step rule: one Gaussian cloud (d = 5, a 16-component fit) against the
    # same cloud split into two modes 8 sd apart. Out of sample, the mixture's extra components
    # buy nothing on the lump (a few hundredths of a nat, either sign). On the modes they buy
    # the entropy difference between one Gaussian of variance 1 + 4^2 in the split coordinate
    # and two unit ones, 0.5 log 17 - log 2 = 0.72, less the few hundredths the lump loses. A
    # one-component fit is the comparison itself (0)
    g = torch.Generator().manual_seed(46)
    B, K, d = 2, 4000, 5
    lump = torch.randn(B, K, d, generator=g, dtype=DT)
    shift = torch.zeros(d, dtype=DT)
    shift[0] = 4.0
    sign = torch.where(torch.rand(B, K, 1, generator=g, dtype=DT) < 0.5, -1.0, 1.0)
    modes = lump + sign * shift
    log_w = torch.full((B, K), -math.log(K), dtype=DT)
    options = dict(em_iterations=10, defensive_weight=0.05, defensive_scale=1.5, generator=g)
    gains = {}
    for name, z in (("lump", lump), ("modes", modes)):
        for m in (1, 16):
            fit = cross_fit(z, log_w, num_components=m, **options)
            gains[name, m] = held_out_gain(z, log_w, fit).mean(-1)
    assert (gains["lump", 1].abs() < 1e-6).all()
    assert (gains["modes", 1].abs() < 1e-6).all()
    assert (gains["lump", 16].abs() < 0.1).all(), gains
    expected = 0.5 * math.log(17) - math.log(2) + gains["lump", 16]
    assert ((gains["modes", 16] - expected).abs() < 0.05).all(), (gains, expected)
    assert (gains["modes", 16] > MIN_GAIN).all()


class _Encoder:
    """Has what encoder_independence checks for; never called here."""

    def sample(self, x, n, *, generator=None):
        raise NotImplementedError

    def log_prob(self, z, x):
        raise NotImplementedError


FACTORIES = {
    "settings": lambda **kw: FitSettings(**kw).checked(),
    "mixture": mixture_independence,
    "encoder": lambda **kw: encoder_independence(_Encoder(), **kw),
    "local_rwmh": local_random_walk,  # fits no defensive component
}
BAD_SETTINGS = [
    ({"num_components": 0}, "num_components"),
    ({"em_iterations": -1}, "em_iterations"),
    ({"defensive_weight": 1.0}, "defensive_weight"),
    ({"defensive_weight": -0.1}, "defensive_weight"),
    ({"defensive_scale": 0.0}, "defensive_scale"),
]


@pytest.mark.parametrize(
    ("factory", "bad", "name"),
    [
        pytest.param(FACTORIES[kind], bad, name, id=f"{kind}-{name}")
        for kind in FACTORIES
        for bad, name in BAD_SETTINGS
        if not (kind == "local_rwmh" and name.startswith("defensive"))
    ],
)
def test_every_mixture_move_rejects_bad_fit_settings_by_name(factory, bad, name):
    with pytest.raises(ValueError, match=name):
        factory(**bad)
