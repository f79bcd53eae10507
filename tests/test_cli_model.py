"""`smcwake fit --model MODULE:FUNCTION --data FILE`: your own model from the command line.

Each test writes a small module of model-building functions into a temporary folder; every way
a spec can be wrong must end in exit status 2 and a one-line message that says what was
expected (no traceback).
"""

import hashlib
import json
import sys
import textwrap

import pytest
import torch

from smcwake import cli

MODELS = textwrap.dedent(
    """
    import torch
    from torch.distributions import Independent, Normal

    import smcwake


    def _model(simulate=True):
        prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)

        def log_likelihood(z, x):
            return Normal(z, 1.0).log_prob(x[:, None, :]).sum(-1)

        def simulator(z):
            return z + torch.randn_like(z)

        return smcwake.Model(prior, log_likelihood, simulate=simulator if simulate else None)


    def build():
        return _model()


    def build_with_data():
        return _model(), torch.randn(12, 2, generator=torch.Generator().manual_seed(0))


    def build_without_simulator():
        return _model(simulate=False)


    def returns_int():
        return 3


    def returns_list_data():
        return _model(), [[1.0, 2.0]]


    def returns_int_data():
        return _model(), torch.zeros(12, 2, dtype=torch.int64)


    def raises():
        raise RuntimeError("no data on this machine")


    not_a_function = 42


    class Factory:
        @staticmethod
        def build():
            return _model()
    """
)

FAST = ["--steps", "3", "--num-particles", "50", "--batch-size", "4", "--encoder", "gaussian"]
FAST += ["--no-progress"]


@pytest.fixture
def models(tmp_path, monkeypatch, request):
    """A module of model functions in tmp_path, importable under a name unique to the test."""
    name = "usermodels_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    (tmp_path / f"{name}.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "x.pt"
    torch.save(torch.randn(12, 2, generator=torch.Generator().manual_seed(1)), path)
    return path


def fit(*args: str) -> int:
    return cli.main(["--threads", "1", "fit", *map(str, args)])


def test_model_and_data_file_train_and_write_summary(models, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert fit("--model", f"{models}:build", "--data", data_file, "--out", out, *FAST) == 0
    printed = capsys.readouterr().out
    assert f"trained smc-wake-a on {models}:build: 12 observations (p = 2), d = 2, 3 steps" in (
        printed
    )
    assert (out / "checkpoint.pt").exists()
    assert (out / "posterior.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["num_observations"], summary["z_dim"]) == (3, 12, 2)
    assert summary["likelihood_evals"] > 0
    assert summary["data"] == str(data_file)
    # the folder holds a run: refused without --resume, continued with it
    assert fit("--model", f"{models}:build", "--data", data_file, "--out", out, *FAST) == 2
    assert "already holds a run" in capsys.readouterr().err
    more = [*FAST[:-1], "--steps", "5"]
    args = ["--model", f"{models}:build", "--data", data_file, "--out", out]
    assert fit(*args, *more, "--resume") == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 5


def test_data_returned_by_the_function_a_file_path_spec_and_a_dotted_function(
    models, tmp_path, capsys
):
    spec = f"{models}:build_with_data"
    assert fit("--model", spec, "--out", tmp_path / "a", *FAST) == 0
    path = tmp_path / f"{models}.py"
    assert (
        fit(
            "--model",
            f"{path}:Factory.build",
            "--data",
            _save(tmp_path),
            "--out",
            tmp_path / "b",
            *FAST,
        )
        == 0
    )
    assert "12 observations" in capsys.readouterr().out


def test_module_in_the_current_folder_is_found(tmp_path, monkeypatch, data_file):
    (tmp_path / "cwd_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert fit("--model", "cwd_models:build", "--data", data_file, "--out", "run", *FAST) == 0
    finally:
        sys.modules.pop("cwd_models", None)


def test_calibration_after_training(models, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", f"{models}:build", "--data", data_file, "--out", out]
    assert fit(*args, *FAST, "--calibration", "40") == 0
    printed = capsys.readouterr().out
    assert "Calibration check on 40 simulations" in printed
    result = json.loads((out / "calibration.json").read_text())
    assert [c["name"] for c in result["checks"]] == ["sbc", "coverage", "tarp"]
    assert (out / "calibration.png").exists()


def _save(tmp_path, value=None, name="data.pt"):
    path = tmp_path / name
    torch.save(torch.randn(12, 2) if value is None else value, path)
    return path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{m}", "expected MODULE:FUNCTION (e.g. mypkg.models:build"),
        ("{m}:", "expected MODULE:FUNCTION"),
        ("no_such_module_xyz:build", "no module named 'no_such_module_xyz'. Run smcwake from"),
        ("{m}.sub:build", "no module named '{m}.sub'"),
        ("{m}:buidl", "has no attribute 'buidl'; it defines Factory, build, build_with_data"),
        ("{m}:Factory.make", "has no attribute 'Factory.make'"),
        ("{m}:not_a_function", "not_a_function is a int, not a function"),
        ("{m}:raises", "raises() raised RuntimeError: no data on this machine (at "),
        ("{m}:returns_int", "returns_int() returned a int; expected an smcwake.Model or a tuple"),
        ("{m}:returns_list_data", "expected a torch.Tensor [n, p], received a list"),
        ("{m}:returns_int_data", "expected a floating-point tensor, received dtype torch.int64"),
        ("missing_dir/models.py:build", "file missing_dir/models.py not found"),
    ],
)
def test_bad_model_specs(models, tmp_path, capsys, spec, message):
    spec = spec.format(m=models)
    assert fit("--model", spec, "--data", _save(tmp_path), "--out", tmp_path / "r", *FAST) == 2
    err = capsys.readouterr().err
    assert message.format(m=models) in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing was trained or written


def test_a_module_that_fails_to_import(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_models.py").write_text("import not_installed_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert (
        fit(
            "--model",
            "broken_models:build",
            "--data",
            _save(tmp_path),
            "--out",
            tmp_path / "r",
            *FAST,
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "importing broken_models failed: No module named 'not_installed_pkg_xyz'" in err
    assert "broken_models.py:1" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("text", "could not read"),
        ({"x": torch.zeros(3, 2)}, "received a dict with keys ['x']; save the tensor itself"),
        (torch.zeros(5), "received shape [5]; for n observations of one number use x[:, None]"),
        (torch.zeros(5, 2, dtype=torch.int32), "received dtype torch.int32"),
        (torch.zeros(0, 2), "expected at least one observation"),
        ([1.0, 2.0], "expected a torch.Tensor [n, p], received a list"),
    ],
)
def test_bad_data_files(models, tmp_path, capsys, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        torch.save(content, path)
    args = ["--model", f"{models}:build", "--data", path, "--out", tmp_path / "r", *FAST]
    assert fit(*args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "--data" in err


def test_numpy_data_file(models, tmp_path):
    import numpy as np

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(12, 2)))
    assert fit("--model", f"{models}:build", "--data", path, "--out", tmp_path / "r", *FAST) == 0


def test_missing_observations_and_mismatched_options(models, tmp_path, capsys):
    assert fit("--model", f"{models}:build", "--out", tmp_path / "r", *FAST) == 2
    assert "no observations; pass --data FILE, or return (model, x)" in capsys.readouterr().err
    spec = f"{models}:build_without_simulator"
    args = ["--model", spec, "--data", _save(tmp_path), "--out", tmp_path / "r"]
    assert fit(*args, "--calibration", "50", *FAST) == 2
    assert "has no simulator" in capsys.readouterr().err
    assert fit("--task", "two-moons", "--data", "x.pt", "--out", tmp_path / "t", *FAST) == 2
    assert "--data goes with --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source: --task or --model
        cli.build_parser().parse_args(["fit", "--task", "a", "--model", "m:f", "--out", "o"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["fit", "--out", "o"])
