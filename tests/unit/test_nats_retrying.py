"""provision.retrying: which JetStream refusals are waited out and which are final (no server:
the errors are nats-py's own classes, raised by a plain function)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from service.nats.provision import JS_NO_PLACEMENT, retrying


def _run(errors: list[Exception]) -> tuple[str, int]:
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return "ok"

    return asyncio.run(retrying("test", call, timeout_s=10)), calls


def test_a_cluster_still_placing_peers_is_waited_for() -> None:
    # Right after a cluster starts, creating a replicated stream is refused this way for a moment.
    placement = [BadRequestError(code=400, err_code=JS_NO_PLACEMENT, description="no suitable peers for placement")
                 for _ in range(2)]
    assert _run(placement) == ("ok", 3)


@pytest.mark.parametrize("error", [
    KeyWrongLastSequenceError(description="wrong last sequence: 5"),  # a compare-and-set refused: no err_code
    BadRequestError(code=400, err_code=10058, description="stream name already in use"),
])
def test_real_refusals_are_raised_at_once(error: Exception) -> None:
    with pytest.raises(type(error)):
        _run([error])
