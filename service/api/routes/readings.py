"""Readings over HTTP: decoded like MQTT messages, made durable like them."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, HTTPException, status

from service.api.deps import DecoderDep, IngesterDep, PipelineDep, WriteScope
from service.api.schemas import ErrorOut, ReadingsIn, ReadingsOut, RefusalOut
from service.errors import StoreError
from service.records import Reading

router = APIRouter(prefix="/v1", tags=["readings"], dependencies=[WriteScope])


@router.post(
    "/readings",
    status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"model": ErrorOut, "description": "Readings could not be made durable; retry later."}},
)
def post_readings(body: ReadingsIn, ingester: IngesterDep, decoder: DecoderDep, pipeline: PipelineDep) -> ReadingsOut:
    """Ingest readings given as MQTT-style topic + payload messages."""
    received_ns = time.time_ns()
    readings: list[Reading] = []
    refused: list[RefusalOut] = []
    for i, msg in enumerate(body.messages):
        # A string payload is sent as is (a bare number, line protocol); anything else
        # as its JSON text, exactly what an MQTT publisher would have put on the wire.
        try:
            raw = msg.payload.encode() if isinstance(msg.payload, str) else orjson.dumps(msg.payload)
        except (TypeError, UnicodeEncodeError) as e:  # e.g. an integer beyond 64 bits, a lone surrogate
            refused.append(RefusalOut(index=i, reason="bad_json", detail=f"payload cannot be encoded: {e}"))
            pipeline.metrics.readings_refused.labels(reason="bad_json").inc()
            continue
        result = decoder.decode(msg.topic, raw, received_ns)
        readings.extend(result.readings)
        if result.refusals:
            refused.extend(RefusalOut(index=i, reason=r.reason, detail=r.detail) for r in result.refusals)
            # Counted (and logged, rate-limited) like the MQTT path does, through the same reporter.
            ingester.reporter.report("http", msg.topic, raw, result.refusals)
    if readings:
        try:
            ingester.submit(readings)
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        except StoreError as e:
            raise HTTPException(503, f"readings could not be made durable: {e}") from e
    return ReadingsOut(accepted=len(readings), refused=refused)

