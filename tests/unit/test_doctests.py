"""The docstring examples of the anomaly components run."""

from __future__ import annotations

import doctest

import pytest

from service.anomaly import decision, scoring


@pytest.mark.parametrize("module", [scoring, decision])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
