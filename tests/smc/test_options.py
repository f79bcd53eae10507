"""run_smc(..., options=SMCOptions(...)): the run of the keywords, one place per setting."""

import dataclasses
import inspect

import pytest
import torch

import smcwake
import smcwake.train
from faults import conjugate, g0
from smcwake import run_smc
from smcwake.smc import SMCOptions
from smcwake.smc.options import OPTION_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")

# every field away from its default, so a setting that options= dropped changes the run
CUSTOM = dict(
    ess_target=0.3,
    resample_threshold=0.2,
    resampling="stratified",
    kernel="rwmh",
    num_mcmc_steps=2,
    max_stages=1,  # stops the runs before tau = 1 (they take 2 or 3 stages)
    space="constrained",  # the same run as "auto" on this prior on R^d (see below)
)


def same_run(a, b) -> bool:
    """Bit-identical results (NaN, e.g. temperatures after a row stopped, equal to NaN)."""
    fields = ("particles", "log_weights", "log_evidence", "temperatures", "num_stages")
    return all(torch.equal(*(r._asdict()[f].nan_to_num(-7.0) for r in (a, b))) for f in fields)


def test_options_give_the_same_run_as_the_keywords():
    model, x = conjugate(4)
    by_keywords = run_smc(model, x, 40, **CUSTOM, generator=g0())
    by_options = run_smc(model, x, 40, options=SMCOptions(**CUSTOM), generator=g0())
    assert same_run(by_options, by_keywords)
    for name, value in CUSTOM.items():  # each setting reaches the run
        if name == "space":  # R^d has one coordinate system: test_unconstrained.py checks it
            continue
        options = SMCOptions(**{**CUSTOM, name: getattr(SMCOptions(), name)})
        off = run_smc(model, x, 40, options=options, generator=g0())
        assert not same_run(off, by_keywords), (name, value)


def test_default_options_are_run_smc_defaults():
    model, x = conjugate(3)
    plain = run_smc(model, x, 30, generator=g0())
    assert same_run(run_smc(model, x, 30, options=SMCOptions(), generator=g0()), plain)
    keywords = inspect.signature(run_smc).parameters
    assert set(OPTION_NAMES) <= set(keywords)


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_a_setting_given_twice_is_an_error_naming_it(name):
    model, x = conjugate(2)
    with pytest.raises(ValueError, match=f"^{name}: given both as a keyword and in options="):
        run_smc(model, x, 20, options=SMCOptions(), **{name: CUSTOM[name]}, generator=g0())


def test_options_of_the_wrong_type_are_rejected():
    model, x = conjugate(2)
    with pytest.raises(TypeError, match="options: expected SMCOptions or None, received dict"):
        run_smc(model, x, 20, options=dict(CUSTOM), generator=g0())


def test_one_class_under_every_old_name():
    assert smcwake.SMCOptions is smcwake.train.SMCOptions is SMCOptions
    assert [f.name for f in dataclasses.fields(SMCOptions)] == list(OPTION_NAMES)


def test_encoder_kernels_are_checked_without_an_encoder():
    SMCOptions(kernel="encoder+mala", num_mcmc_steps=3)  # built later, with the encoder
    with pytest.raises(ValueError, match="num_steps: expected >= 2"):
        SMCOptions(kernel="encoder+rwmh", num_mcmc_steps=1)
