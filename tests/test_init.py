"""The package's top level: what ``import smcwake`` loads and what it exports."""

import subprocess
import sys

import pytest

import smcwake


def test_import_does_not_load_the_distributed_module():
    # torch itself imports torch.distributed; what smcwake must not do is import its own
    # distributed module (and its process-group machinery) before fit_distributed is used
    code = "import sys, smcwake; print('smcwake.distributed' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_fit_distributed_is_loaded_on_first_use():
    from smcwake.distributed import fit_distributed

    assert smcwake.fit_distributed is fit_distributed
    assert "fit_distributed" in smcwake.__all__


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        smcwake.no_such_name  # noqa: B018
