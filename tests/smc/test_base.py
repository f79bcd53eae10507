"""The sampler/kernel contract lives in smcwake.smc.base; kernels do not import the sampler."""

import ast
from pathlib import Path

import smcwake.smc
from smcwake.smc import base, kernels, mh, sampler

SMC_DIR = Path(smcwake.smc.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any level (``if TYPE_CHECKING:`` blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_only_the_package_init_imports_the_sampler():
    importers = sorted(
        path.name
        for path in SMC_DIR.glob("*.py")
        if "smcwake.smc.sampler" in imported_modules(path)
    )
    assert importers == ["__init__.py"]


def test_the_scan_sees_an_import_of_the_sampler(tmp_path):
    # the premise of the test above: a guarded import is found too
    module = tmp_path / "m.py"
    module.write_text("if TYPE_CHECKING:\n    from smcwake.smc.sampler import SMCState\n")
    assert "smcwake.smc.sampler" in imported_modules(module)


def test_old_import_paths_give_the_same_objects():
    assert sampler.SMCState is base.SMCState is smcwake.smc.SMCState
    assert sampler.SMCResult is base.SMCResult is smcwake.smc.SMCResult
    for name in ("Kernel", "MoveInfo", "Target"):
        assert getattr(mh, name) is getattr(kernels, name) is getattr(base, name)
        assert getattr(smcwake.smc, name) is getattr(base, name)
