"""Your own model on the command line: ``smcwake fit --model MODULE:FUNCTION --data FILE``.

:func:`load_model` imports MODULE (a dotted name, searched in the current folder first, or a
path to a ``.py`` file), calls FUNCTION() and checks that it returned an :class:`smcwake.Model`
or a tuple ``(Model, x)``; :func:`load_data` reads the observations from a file. Each mistake in
a spec, a module, a function or a data file raises a ``ValueError``, ``TypeError`` or
``FileNotFoundError`` that names what was expected and what was found.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path

import torch
from torch import Tensor

from smcwake.model import Model

__all__ = ["check_data", "load_data", "load_model"]


def _where(err: BaseException) -> str:
    """``file:line`` of the innermost frame of an exception, for one-line error messages."""
    frames = traceback.extract_tb(err.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _import_module(name: str, spec: str):
    """Import the MODULE part of a --model spec: a dotted name, or a path to a .py file."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec}: file {path} not found")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            raise ValueError(
                f"--model {spec}: running {path} failed: {type(err).__name__}: {err}"
                f"{_where(err)}; -v shows the traceback"
            ) from err
        return module
    # like `python -m`, look in the current folder first, so that a mymodels.py next to the
    # user is found without packaging it
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            raise ValueError(
                f"--model {spec}: no module named {err.name!r}. Run smcwake from the folder "
                "that holds it, add that folder to PYTHONPATH, install the package that "
                "provides it, or give a file: --model path/to/file.py:FUNCTION"
            ) from None
        raise ValueError(
            f"--model {spec}: importing {name} failed: {err}{_where(err)}; -v shows the traceback"
        ) from err
    except Exception as err:
        raise ValueError(
            f"--model {spec}: importing {name} failed: {type(err).__name__}: {err}"
            f"{_where(err)}; -v shows the traceback"
        ) from err


def _describe(value: object) -> str:
    if isinstance(value, tuple):
        kinds = ", ".join(type(v).__name__ for v in value)
        return f"a tuple of {len(value)} ({kinds})"
    return f"a {type(value).__name__}"


def load_model(spec: str) -> tuple[Model, Tensor | None]:
    """Call the function a ``--model MODULE:FUNCTION`` spec names; return ``(model, x or None)``.

    ``MODULE`` is an importable dotted name (the current folder is searched first) or a path
    to a ``.py`` file; ``FUNCTION`` may be dotted (``Models.build``). The function is called
    without arguments and must return an :class:`smcwake.Model` or a tuple ``(Model, x)`` with
    x a floating-point tensor [n, p]. Every way this can go wrong raises a ``ValueError``,
    ``TypeError`` or ``FileNotFoundError`` that names the spec and what was expected.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"--model: expected MODULE:FUNCTION (e.g. mypkg.models:build or "
            f"models.py:build), received {spec!r}"
        )
    module = _import_module(module_name, spec)
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            defined = sorted(
                name
                for name, value in vars(module).items()
                if callable(value)
                and not name.startswith("_")
                and getattr(value, "__module__", None) == module.__name__
            )
            hint = f"; it defines {', '.join(defined[:12])}" if defined else ""
            raise ValueError(f"--model {spec}: {module_name} has no attribute {attribute!r}{hint}")
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(
            f"--model {spec}: {attribute} is {_describe(target)}, not a function; expected a "
            "function without arguments returning an smcwake.Model or (Model, x)"
        )
    try:
        built = target()
    except Exception as err:
        raise ValueError(
            f"--model {spec}: {attribute}() raised {type(err).__name__}: {err}{_where(err)}; "
            "-v shows the traceback"
        ) from err
    if isinstance(built, Model):
        return built, None
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], Model):
        x = check_data(built[1], f"--model {spec}: the x returned by {attribute}()")
        return built[0], x
    raise TypeError(
        f"--model {spec}: {attribute}() returned {_describe(built)}; expected an smcwake.Model "
        "or a tuple (Model, x) with x a float tensor [n, p]"
    )


def check_data(x: object, source: str) -> Tensor:
    """x if it is a floating-point tensor [n, p] with n, p >= 1, else a clear error.

    Shapes: x [n, p] -> [n, p].

    >>> check_data(torch.zeros(3, 2), "x").shape
    torch.Size([3, 2])
    >>> check_data(torch.zeros(3, 2, dtype=torch.int64), "x")
    Traceback (most recent call last):
    ...
    TypeError: x: expected a floating-point tensor, received dtype torch.int64; convert it ...
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{source}: expected a torch.Tensor [n, p], received {_describe(x)}")
    if x.dim() != 2:
        hint = (
            "; for n observations of one number use x[:, None], for one observation x[None, :]"
            if x.dim() == 1
            else ""
        )
        raise ValueError(
            f"{source}: expected a tensor [n, p] (one observation per row), received shape "
            f"{list(x.shape)}{hint}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{source}: expected a floating-point tensor, received dtype {x.dtype}; convert it "
            "with x.float() or x.double()"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{source}: expected at least one observation and one column, "
            f"received shape {list(x.shape)}"
        )
    return x


def load_data(path: str | os.PathLike) -> Tensor:
    """Observations from a file: a tensor saved with ``torch.save`` or a ``.npy`` array.

    Read with ``torch.load(weights_only=True)`` (no code runs); the result must be a
    floating-point tensor [n, p]. Shapes: -> x [n, p].
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: {path} not found")
    try:
        if path.suffix == ".npy":
            loaded = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"--data: could not read {path} ({type(err).__name__}: {err}); expected a tensor "
            "saved with torch.save(x, path), or a numpy array saved with numpy.save"
        ) from err
    if isinstance(loaded, dict):
        raise TypeError(
            f"--data {path}: expected a tensor [n, p], received a dict with keys "
            f"{sorted(map(str, loaded))[:8]}; save the tensor itself: torch.save(x, path)"
        )
    return check_data(loaded, f"--data {path}")
