"""run_smc's arguments: each one a run cannot use is rejected with its name, what was expected
and what was received, before any particle is drawn."""

import math

import pytest
import torch

from faults import conjugate, g0
from smcwake import run_smc

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(num_particles=1), "num_particles: expected an integer >= 2, received 1"),
        (dict(num_particles=2.5), "num_particles: expected an integer >= 2, received 2.5"),
        (dict(ess_target=0.0), r"ess_target: expected a fraction in \(0, 1\), received 0.0"),
        (dict(ess_target=1.0), r"ess_target: .*received 1.0"),
        (dict(ess_target=math.nan), r"ess_target: .*received nan"),
        (dict(resample_threshold=1.5), r"resample_threshold: expected a fraction in \[0, 1\]"),
        (dict(max_stages=0), "max_stages: expected .*>= 1, received 0"),
        (dict(resampling="sytematic"), "resampling: unknown scheme 'sytematic'; expected one of"),
        (dict(kernel="rwm"), "kernel: unknown name 'rwm'; expected one of"),
        (dict(num_mcmc_steps=0), "num_steps: expected >= [12].*received 0"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else None,
)
def test_run_smc_rejects_invalid_options(options, message):
    model, x = conjugate()
    with pytest.raises(ValueError, match=message):
        run_smc(model, x, **{"num_particles": 20, **options}, generator=g0())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(ess_target="0.5"), "ess_target"),
        (dict(max_stages=2.5), "max_stages"),
        (dict(min_increment=0.0), "min_increment"),
        (dict(min_increment=-1e-9), "min_increment"),
        (dict(generator=0), r"generator: expected a torch.Generator .*received int.*seed=0"),
        (dict(seed="0"), "seed: expected an integer or None, received '0'"),
        (dict(seed=0, generator=g0()), "seed and generator: pass one of them, not both"),
        (dict(num_mcmc_steps=2.5), "num_mcmc_steps: expected None or an integer >= 1.*2.5"),
        (dict(dtype=torch.int32), r"dtype: expected .*torch.float64, received torch.int32"),
        (dict(dtype=torch.float16), "dtype: .*received torch.float16"),
        (dict(dtype="float64"), "dtype: .*received 'float64'"),
    ],
    ids=[
        "ess-str",
        "max-stages-float",
        "min-increment-0",
        "min-increment-negative",
        "generator-int",
        "seed-str",
        "seed-and-generator",
        "mcmc-steps-float",
        "dtype-int32",
        "dtype-float16",
        "dtype-str",
    ],
)
def test_run_smc_rejects_mistyped_options(options, message):
    model, x = conjugate()
    with pytest.raises((ValueError, TypeError), match=message):
        run_smc(model, x, 20, **{"generator": g0(), **options})
