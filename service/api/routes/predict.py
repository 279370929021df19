"""Stateless forecasts: the history travels in the request."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException, Request

from service.api.deps import EngineDep, ReadScope
from service.api.schemas import ErrorOut, ForecastOut, PredictIn
from service.errors import ModelError

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[ReadScope])


@router.post(
    "/predict",
    responses={404: {"model": ErrorOut, "description": "Unknown model or version."},
               413: {"model": ErrorOut, "description": "History longer than api.predict_max_steps, or more "
                     "values (rows x features) than api.predict_max_values."},
               422: {"model": ErrorOut, "description": "History does not fit the model."}},
)
def predict(body: PredictIn, engine: EngineDep, request: Request) -> ForecastOut:
    """Forecast from a history given in the body (no stream state is touched).

    The work is bounded: a step model makes one call per row, so at most
    ``api.predict_max_steps`` rows and ``api.predict_max_values`` values are accepted.
    """
    api = request.app.state.settings.api
    steps = len(body.values)
    if steps > api.predict_max_steps:
        raise HTTPException(413, f"history has {steps} steps; at most {api.predict_max_steps} are accepted "
                                 "(api.predict_max_steps): send the most recent ones")
    widths = {len(row) for row in body.values}
    n_values = sum(len(row) for row in body.values)
    if n_values > api.predict_max_values:
        raise HTTPException(413, f"history has {n_values} values (rows x features); at most "
                                 f"{api.predict_max_values} are accepted (api.predict_max_values)")
    if len(widths) != 1 or 0 in widths:
        raise HTTPException(422, f"values must be a T×F table with F >= 1 in every row; found row widths {sorted(widths)}")
    if len(body.timestamps_ns) != len(body.values):
        raise HTTPException(
            422, f"timestamps_ns has {len(body.timestamps_ns)} entries, values has {len(body.values)} rows: they must match"
        )
    ts = np.asarray(body.timestamps_ns, dtype=np.int64)  # (T,); the schema bounds each to int64
    if ts.size > 1 and not bool(np.all(np.diff(ts) > 0)):
        raise HTTPException(422, "timestamps_ns must be strictly increasing")
    wide = np.array(
        [[np.nan if v is None else v for v in row] for row in body.values], dtype=np.float64
    )  # (T, F); NaN = missing, as the model contract says
    if np.nanmax(np.abs(wide), initial=0.0) > np.finfo(np.float32).max:
        raise HTTPException(422, "values must fit in float32 (|v| <= 3.4e38)")
    known = {(m.name, m.version) for m in engine.models()}
    if not any(n == body.model and body.version in (None, v) for n, v in known):
        raise HTTPException(404, f"unknown model {body.model!r}" + (f" version {body.version!r}" if body.version else ""))
    try:
        fc = engine.predict(body.model, body.version, body.values, body.timestamps_ns, body.cadence_s)
    except ModelError as e:
        raise HTTPException(404, str(e)) from e
    except ValueError as e:  # the engine's own checks against the model (feature count, cadence)
        raise HTTPException(422, str(e)) from e
    return ForecastOut.from_forecast(fc, request.app.state.settings.api.band_z, stream_id=None)
