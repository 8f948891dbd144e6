"""The worked examples in the math and base modules' docstrings run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "psfm.errors",
    "psfm.hashing",
    "psfm.metrics",
    "psfm.optim.ftrl",
    "psfm.models.layout",
    "psfm.models.loss",
    "psfm.steps",
    "psfm.ps.table",
    "psfm.datasets.gen",
    "psfm.passes",
    "psfm.ray_backend.placement",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no worked example"
    assert result.failed == 0
