"""The docstring examples of the anomaly components run."""

from __future__ import annotations

import doctest

import pytest

from service.anomaly import decision, evidence, scoring
from service.streams import rules


@pytest.mark.parametrize("module", [scoring, decision, evidence, rules])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0
