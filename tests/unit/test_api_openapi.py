"""Property-based: schemathesis drives every operation of the OpenAPI document.

No response may be a 5xx, and every response must conform to the documented schema
(status code, content type, body). Schema-valid data may still get a 422 when it breaks
rules a JSON schema cannot state (rows of one width, as many timestamps as rows), so
that one check is left out. With keys configured, schemathesis also checks that
made-up keys are refused. The operations are walked by hand with hypothesis
(schemathesis' pytest plugin does not load under this pytest version).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.api.app import create_app
from tests.apiharness import harness

EXAMPLES = 20
WRITE = "w-key-for-fuzzing"


@pytest.mark.parametrize("auth", [False, True], ids=["open", "keys"])
def test_every_operation_conforms(tmp_path: Path, auth: bool) -> None:
    api: dict[str, object] = {}
    headers: dict[str, str] = {}
    if auth:
        (tmp_path / "w").write_text(WRITE)
        api["api_key_file"] = tmp_path / "w"
        headers["X-API-Key"] = WRITE
    with harness(tmp_path, **api) as h:
        app = create_app(h.pipeline.settings, pipeline=h.pipeline)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        labels = []
        for result in schema.get_all_operations():
            op = result.ok()
            labels.append(op.label)

            @given(case=op.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

            check()
        assert {"GET /v1/streams", "POST /v1/predict", "POST /v1/readings", "GET /readyz"} <= set(labels)
