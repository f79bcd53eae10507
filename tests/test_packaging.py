"""Packaging: every third-party package the code imports is declared, and the core runs
without the optional ones (matplotlib, scikit-learn, ArviZ)."""

import ast
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DISTRIBUTION = {"sklearn": "scikit-learn"}  # import name -> name on PyPI, where they differ
OPTIONAL = {"matplotlib": "plot", "sklearn": "sklearn", "arviz": "arviz"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def imported_packages() -> set[str]:
    """Top-level third-party modules imported anywhere in src/smcwake (also inside functions)."""
    found = set()
    for path in (ROOT / "src" / "smcwake").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
            elif (  # require("sklearn.model_selection", ...): an import by name
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "require"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(str(node.args[0].value).partition(".")[0])
    return found - set(sys.stdlib_module_names) - {"smcwake", "__future__"}


def test_every_imported_package_is_declared():
    core = requirement_names(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module in sorted(imported_packages()):
        name = DISTRIBUTION.get(module, module).lower()
        if module in OPTIONAL:
            assert name not in core, f"{name} is optional: declare it in an extra only"
            assert name in requirement_names(extras[OPTIONAL[module]]), (module, OPTIONAL[module])
        else:
            assert name in core, f"{module} is imported by smcwake but not a declared dependency"


def test_torch_has_a_lower_bound_only_and_the_project_pins_it():
    (torch_req,) = [r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch")]
    assert ">=" in torch_req
    assert "<" not in torch_req
    assert "==" not in torch_req
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().splitlines()
    assert "-c requirements.txt" in (ROOT / "Makefile").read_text()


def test_core_runs_without_the_optional_packages():
    script = textwrap.dedent(
        """
        import sys
        for name in ("matplotlib", "sklearn", "arviz"):
            sys.modules[name] = None  # as if not installed: importing them raises ImportError
        import torch
        from torch.distributions import Independent, Normal

        import smcwake

        prior = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        model = smcwake.Model(
            prior, lambda z, x: Normal(z, 1.0).log_prob(x[:, None, :]).sum(-1),
            simulate=lambda z: z + torch.randn_like(z),
        )
        x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
        assert smcwake.run_smc(model, x, 100, seed=0).converged.all()
        out = smcwake.fit(model, x, encoder="gaussian", steps=2, num_particles=50, batch_size=3,
                          progress=False)
        assert smcwake.check_calibration(out.encoder, model, 20, num_samples=10, seed=0).checks
        for call in (
            lambda: smcwake.plot.pairplot(x),
            lambda: smcwake.to_inference_data(x),
            lambda: smcwake.diagnostics.c2st(x, x),
        ):
            try:
                call()
            except ImportError as err:
                print(err)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert [line.split("`")[1] for line in done.stdout.splitlines()] == [
        "pip install 'smcwake[plot]'",
        "pip install 'smcwake[arviz]'",
        "pip install 'smcwake[sklearn]'",
    ]
