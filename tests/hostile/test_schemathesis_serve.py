"""Schemathesis against the OpenAPI of the real ``sensorcast serve`` (real engine, real
ingester, real influxd and mosquitto), extending tests/unit/test_api_openapi.py, which
drives the in-process app over twins: here the generated requests reach the real
decoder, store and ONNX runtime. No response may be a 5xx and every response must match
the documented schema (schema-valid data may still get a 422 for rules a JSON schema
cannot state, so that one check is left out, as in the unit test)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.faults.serve_helpers import kit_models, serve
from tools.bench.serveproc import ServeProcess
from tools.localservers import Influxd, Mosquitto

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("SENSORCAST_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def svc(mosquitto: Mosquitto, influxd: Influxd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("fuzzserve")
    with serve(tmp / "svc", mosquitto.url, f"influxdb://127.0.0.1:{influxd.port}/fuzzserve",
               kit_models(tmp / "models"), SENSORCAST_MQTT__CLIENT_ID="fuzz-serve") as sp:
        yield sp


def test_every_operation_of_the_real_service_conforms(svc: ServeProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{svc.url}/openapi.json")
    labels = []
    for result in schema.get_all_operations():
        op = result.ok()
        labels.append(op.label)

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=svc.url, excluded_checks=[positive_data_acceptance])

        check()
    assert {"GET /v1/streams", "POST /v1/predict", "POST /v1/readings", "GET /readyz"} <= set(labels)
    assert svc.proc is not None and svc.proc.poll() is None, "the service died"
    assert "Traceback" not in svc.tail(10**7), svc.tail()
