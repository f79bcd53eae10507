"""Golden-file test: seeded outputs of run_smc, fit (every method) and the benchmark runners.

``golden.json`` holds, for each case of ``golden_cases.py``, a few numbers computed by the code
as it was when the file was last written: log-evidences, loss histories, parameter checksums,
metric values, whole benchmark result files. The test reruns every case and asks for the same
numbers, so a refactor that is meant to change nothing proves it changed nothing.

When a change of results is intended (a new default, a fixed bug), rewrite the file in a commit
of its own that says why::

    python tests/golden/regenerate.py                  # every case
    python tests/golden/regenerate.py --only fit/wake  # one case

Tolerance: none. Every case runs on the CPU with one thread, in float64 where the entry point
lets us choose the dtype (the command line and the digits task run in float32), from seeded
generators, so each number is reproduced bit for bit on the machine and torch build that wrote
the file; JSON stores Python floats exactly. A tolerance would not help where results differ:
one rounding difference flips a Metropolis-Hastings decision and changes everything after it.
On another CPU or torch build, vectorized kernels may round differently: regenerate there.
Wall times, creation times, the torch version and thread counts are left out of the records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from golden_cases import CASES, DATA, SLOW_CASES

STORED = json.loads(DATA.read_text())


pytestmark = pytest.mark.usefixtures("one_thread")


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Paths where two JSON values differ (NaN equals NaN; numbers compared exactly; the keys
    of an object in the same order, as the files written are compared too)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}/{k}: missing" for k in expected if k not in actual]
        out += [f"{path}/{k}: unexpected" for k in actual if k not in expected]
        if not out and list(expected) != list(actual):
            out.append(f"{path}: keys in another order: {list(actual)}")
        for key in expected.keys() & actual.keys():
            out += differences(expected[key], actual[key], f"{path}/{key}")
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: length {len(expected)} -> {len(actual)}"]
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out += differences(e, a, f"{path}[{i}]")
        return out
    both_nan = isinstance(expected, float) and isinstance(actual, float)
    if both_nan and math.isnan(expected) and math.isnan(actual):
        return []
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: {expected!r} -> {actual!r}"]
    return []


def _check(name: str, case, tmp_path: Path) -> None:
    if name not in STORED:
        pytest.fail(f"{name}: not stored; run python tests/golden/regenerate.py --only {name}")
    actual = json.loads(json.dumps(case(tmp_path)))
    diff = differences(STORED[name], actual)
    shown = "\n  ".join(diff[:20])
    assert not diff, f"{name}: {len(diff)} values changed\n  {shown}"


def test_differences_finds_a_changed_number():  # the comparison itself can fail
    assert differences({"a": [1.0, math.nan]}, {"a": [1.0, math.nan]}) == []
    assert differences({"a": [1.0, 2.0]}, {"a": [1.0, 2.0000000000000004]}) == [
        "/a[1]: 2.0 -> 2.0000000000000004"
    ]
    assert differences({"a": 1}, {"a": 1.0}) == ["/a: 1 -> 1.0"]
    assert differences({"a": 1}, {"b": 1}) == ["/a: missing", "/b: unexpected"]
    assert differences({"a": 1, "b": 2}, {"b": 2, "a": 1}) == [
        ": keys in another order: ['b', 'a']"
    ]


def test_every_case_is_stored():
    assert set(STORED) == set(CASES) | set(SLOW_CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_golden(name, tmp_path):
    _check(name, CASES[name], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_golden_slow(name, tmp_path):
    _check(name, SLOW_CASES[name], tmp_path)
