"""smcwake.interop.to_inference_data against the installed ArviZ (skipped without it), against
ArviZ 1.x's converter (arviz-base) where that is installed, and the error without ArviZ."""

import sys
import types
import warnings

import numpy as np
import pytest
import torch

from smcwake.interop import _arviz_major, to_inference_data


def draws(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture
def arviz():
    with warnings.catch_warnings():  # ArviZ 0.x announces its 1.x refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        return pytest.importorskip("arviz")


@pytest.fixture
def arviz_1x(monkeypatch):
    """ArviZ 1.x's from_dict (it lives in arviz-base), behind an ``arviz`` module of version 1."""
    base = pytest.importorskip("arviz_base")
    fake = types.ModuleType("arviz")
    fake.__version__ = "1.3.0"
    fake.from_dict = base.from_dict
    monkeypatch.setitem(sys.modules, "arviz", fake)
    return fake


def posterior_group(data):
    """The posterior group as an xarray Dataset, for InferenceData and DataTree alike."""
    group = data["posterior"] if not hasattr(data, "posterior") else data.posterior
    return group.to_dataset() if hasattr(group, "to_dataset") else group


def observed_group(data):
    group = data["observed_data"] if not hasattr(data, "observed_data") else data.observed_data
    return group.to_dataset() if hasattr(group, "to_dataset") else group


def check_named_single_observation(data, samples, x):
    post = posterior_group(data)
    assert set(post.data_vars) == {"mu", "log_sigma"}
    assert post["mu"].dims == ("chain", "draw")
    assert post.sizes["chain"] == 1
    assert post.sizes["draw"] == 200
    np.testing.assert_array_equal(post["mu"].values[0], samples[:, 0].numpy())
    np.testing.assert_array_equal(post["log_sigma"].values[0], samples[:, 1].numpy())
    obs = observed_group(data)
    assert obs["x"].dims == ("x_dim",)
    np.testing.assert_array_equal(obs["x"].values, x.numpy())


def check_vector_many_observations(data, samples):
    post = posterior_group(data)
    assert post["z"].dims == ("chain", "draw", "observation", "z_dim")
    assert dict(post["z"].sizes) == {"chain": 4, "draw": 50, "observation": 3, "z_dim": 2}
    values = post["z"].values  # [chain, draw, B, d]; chain c holds draws c*50 .. c*50 + 49
    for c in range(4):
        np.testing.assert_array_equal(
            values[c], samples[:, c * 50 : (c + 1) * 50].permute(1, 0, 2).numpy()
        )


def test_installed_arviz_single_observation_with_names(arviz):
    samples, x = draws(200, 2), draws(5)
    data = to_inference_data(samples, ["mu", "log_sigma"], x=x)
    check_named_single_observation(data, samples, x)
    if _arviz_major(arviz) == 0:  # 1.x's summary lives in arviz-stats, with other columns
        summary = arviz.summary(data, kind="stats")
        assert list(summary.index) == ["mu", "log_sigma"]
        assert summary.loc["mu", "mean"] == pytest.approx(float(samples[:, 0].mean()), abs=1e-3)


def test_installed_arviz_several_observations_and_chains(arviz):
    samples = draws(3, 200, 2)
    check_vector_many_observations(to_inference_data(samples, num_chains=4), samples)


def test_arviz_1x_converter(arviz_1x):
    samples, x = draws(200, 2), draws(5)
    data = to_inference_data(samples, ["mu", "log_sigma"], x=x)
    assert type(data).__name__ == "DataTree"
    check_named_single_observation(data, samples, x)
    samples = draws(3, 200, 2)
    check_vector_many_observations(to_inference_data(samples, num_chains=4), samples)


def test_numpy_draws_are_accepted(arviz):
    data = to_inference_data(draws(100, 1).numpy(), ["theta"])
    assert posterior_group(data)["theta"].shape == (1, 100)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((draws(10),), {}, ValueError, r"\[S, d\] or \[B, S, d\]"),
        ((draws(10, 2), ["a"]), {}, ValueError, "expected 2 names"),
        ((draws(10, 2), ["a", "a"]), {}, ValueError, "distinct non-empty names"),
        ((draws(10, 2), ["chain", "b"]), {}, ValueError, "name dimensions in ArviZ"),
        ((draws(10, 2),), {"num_chains": 3}, ValueError, "a divisor of the 10 draws"),
        ((draws(2, 10, 2),), {"x": draws(3, 4)}, ValueError, r"x: expected shape \[B, p\]"),
        ((draws(10, 2),), {"x": draws(3, 4)}, ValueError, r"x: expected shape \[p\]"),
        (([[1.0, 2.0]],), {}, TypeError, "torch.Tensor or numpy array"),
        ((torch.zeros(5, 2, dtype=torch.int64),), {}, TypeError, "floating-point"),
    ],
)
def test_bad_input_is_refused_before_arviz_is_needed(monkeypatch, args, kwargs, error, match):
    monkeypatch.setitem(sys.modules, "arviz", None)  # the checks come first
    with pytest.raises(error, match=match):
        to_inference_data(*args, **kwargs)


def test_missing_arviz_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"pip install 'smcwake\[arviz\]'"):
        to_inference_data(draws(10, 2))
