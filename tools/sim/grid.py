"""A simulated sensor grid: an 8x8 infrared array looking at a machine that warms up.

The device ``GridSpec.device`` publishes one frame per step; each pixel is a quantity
named ``r{row}c{col}`` (row-major, the order the grid model's features take), so the
engine serves the device as ONE multivariate stream of ``H*W`` features. A frame is a
pure function of (seed, device, step):

    pixel = ambient + machine heat x (warm-up/cool-down cycle) x body profile
            + moving hot spots + AR(1) noise

- the machine runs in cycles (``cycle_s`` signal seconds): it warms up slowly (first-order
  rise with time constant ``tau_s``) while running and cools down the same way when off;
- ``spots`` hot spots (a bearing, a motor winding) drift around the body on slow
  Lissajous paths, brighter while the machine runs;
- one dead pixel (``dead``) stops reading at ``dead_after_step``: NaN in ``frames`` and
  left out of the payload (the engine reads a missing quantity as NaN, like a gap).
  It reads normally before, so a model trained on the history has its statistics.

``frame_payload`` is the JSON named-fields payload (docs/ingest.md) for topic
``sensors/{device}`` (a template without ``{quantity}``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.records import NS_PER_S

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class GridSpec:
    device: str = "ir01"
    rows: int = 8
    cols: int = 8
    cadence_s: float = 60.0  # wall seconds between frames
    compression: float = 1.0  # signal seconds per wall second
    ambient: float = 22.0  # degC
    heat: float = 35.0  # degC the machine body gains when fully warm
    cycle_s: float = 8 * 3600.0  # one run + rest cycle in signal seconds
    duty: float = 0.6  # fraction of the cycle the machine runs
    tau_s: float = 1800.0  # warm-up / cool-down time constant
    spots: int = 2
    spot_heat: float = 12.0
    noise: float = 0.25  # degC, per pixel
    dead: tuple[int, int] | None = (2, 5)  # (row, col) of the dead pixel; None: all alive
    dead_after_step: int = 2000
    decimals: int = 2

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1 or self.cadence_s <= 0 or self.compression <= 0:
            raise ValueError(f"grid needs rows, cols >= 1 and cadence_s, compression > 0; found {self}")
        if self.dead is not None and not (0 <= self.dead[0] < self.rows and 0 <= self.dead[1] < self.cols):
            raise ValueError(f"dead pixel {self.dead} is outside the {self.rows}x{self.cols} grid")

    @property
    def names(self) -> list[str]:
        """Pixel quantity names, row-major: the grid model's feature order."""
        return pixel_names(self.rows, self.cols)


def pixel_names(rows: int, cols: int) -> list[str]:
    return [f"r{r}c{c}" for r in range(rows) for c in range(cols)]


def _machine(t_s: F64, spec: GridSpec) -> F64:
    """Warmth 0..1 of the machine body at signal times ``t_s``: first-order response to on/off."""
    period, on = spec.cycle_s, spec.duty * spec.cycle_s
    k = np.exp(-on / spec.tau_s)
    j = np.exp(-(period - on) / spec.tau_s)
    # The periodic steady state: warmth at the start of a run (end of the previous rest).
    start = (1 - k) * j / (1 - k * j)
    peak = 1 - (1 - start) * k
    phase = np.mod(t_s, period)
    running = phase < on
    warm = 1 - (1 - start) * np.exp(-phase / spec.tau_s)
    cool = peak * np.exp(-(phase - on) / spec.tau_s)
    out: F64 = np.where(running, warm, cool)
    return out


def frames(spec: GridSpec, start_ns: int, n_steps: int, seed: int, start_step: int = 0) -> tuple[NDArray[np.int64], F64]:
    """Timestamps (n,) and frames (n, rows*cols) row-major, NaN for the dead pixel once dead."""
    steps = np.arange(start_step, start_step + n_steps)
    ts = start_ns + np.round(steps * spec.cadence_s * NS_PER_S).astype(np.int64)
    t_s: F64 = (steps * spec.cadence_s * spec.compression).astype(np.float64)
    rng = np.random.default_rng([seed, zlib.crc32(spec.device.encode())])
    R, C = spec.rows, spec.cols
    yy, xx = np.mgrid[0:R, 0:C].astype(np.float64)
    # The machine's body: a warm ellipse in the middle of the view, cooler at its edges.
    body = np.exp(-(((yy - (R - 1) / 2) / (0.35 * R)) ** 2 + ((xx - (C - 1) / 2) / (0.4 * C)) ** 2))
    warmth = _machine(t_s, spec)[:, None, None]  # (n, 1, 1)
    out = spec.ambient + spec.heat * warmth * body[None]
    params = rng.uniform(0, 1, (spec.spots, 4))
    for a, b, p, q in params:  # hot spots on slow Lissajous paths over the body
        wy, wx = 2 * np.pi / (spec.cycle_s * (1.5 + a)), 2 * np.pi / (spec.cycle_s * (2.1 + b))
        cy = (R - 1) / 2 + 0.3 * R * np.sin(wy * t_s + 6 * p)
        cx = (C - 1) / 2 + 0.3 * C * np.sin(wx * t_s + 6 * q)
        d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        out = out + spec.spot_heat * (0.3 + 0.7 * warmth) * np.exp(-d2 / 1.5)
    # AR(1) noise per pixel, the same for the same (seed, device) whatever the start step.
    noise_rng = np.random.default_rng([seed, zlib.crc32(spec.device.encode()), 1])
    white = noise_rng.normal(0, spec.noise, (start_step + n_steps, R, C))
    ar = np.empty_like(white)
    acc = np.zeros((R, C))
    for i in range(len(white)):  # a short loop over steps; frames are small
        acc = 0.6 * acc + 0.8 * white[i]
        ar[i] = acc
    out = np.round(out + ar[start_step:], spec.decimals).reshape(n_steps, R * C)
    if spec.dead is not None:
        r, c = spec.dead
        out[steps >= spec.dead_after_step, r * C + c] = np.nan
    return ts, out


def frame_payload(ts_ns: int, frame: F64, names: list[str]) -> bytes:
    """JSON named fields ``{"ts": ms, "r0c0": 23.1, ...}``; NaN pixels (the dead one) are left out."""
    body: dict[str, float | int] = {"ts": ts_ns // 1_000_000}
    for name, v in zip(names, frame.tolist(), strict=True):
        if v == v:  # not NaN: JSON has no NaN, the ingester refuses it
            body[name] = v
    return json.dumps(body, separators=(",", ":")).encode()


class GridPublisher:
    """Publishes grid frames as they fall due (``sensorcast simulate --grids N``).

    With a topic template that has ``{quantity}``, each pixel is its own message (the
    ingester's default ``sensors/{device}/{quantity}``); without, one JSON named-fields
    payload per frame (``sensors/{device}``). Either way the engine sees one device whose
    quantities are the pixels: one multivariate stream for a grid model.
    """

    CHUNK = 256  # frames computed at once (the AR noise replays from step 0 per chunk)

    def __init__(self, specs: list[GridSpec], start_ns: int, seed: int, send: Callable[[str, bytes], bool],
                 topic: str = "sensors/{device}/{quantity}") -> None:
        self.specs, self.start_ns, self.seed, self.send, self.topic = specs, start_ns, seed, send, topic
        self.next_step = [0] * len(specs)
        self._cache: list[tuple[int, NDArray[np.int64], F64] | None] = [None] * len(specs)
        self.published = 0  # messages

    def _frame(self, i: int, step: int) -> tuple[int, F64]:
        c = self._cache[i]
        if c is None or not c[0] <= step < c[0] + self.CHUNK:
            ts, v = frames(self.specs[i], self.start_ns, self.CHUNK, self.seed, start_step=step)
            c = self._cache[i] = (step, ts, v)
        return int(c[1][step - c[0]]), c[2][step - c[0]]

    def step(self, now_ns: int) -> int:
        """Publish every frame due at ``now_ns``; returns how many frames went out."""
        n = 0
        for i, spec in enumerate(self.specs):
            cadence_ns = round(spec.cadence_s * NS_PER_S)
            while self.start_ns + self.next_step[i] * cadence_ns <= now_ns:
                ts, frame = self._frame(i, self.next_step[i])
                self.next_step[i] += 1
                n += 1
                if "{quantity}" in self.topic:
                    for name, v in zip(spec.names, frame.tolist(), strict=True):
                        if v == v:  # the dead pixel sends nothing
                            payload = json.dumps({"ts": ts // 1_000_000, "value": v}).encode()
                            self.published += self.send(self.topic.format(device=spec.device, quantity=name), payload)
                else:
                    self.published += self.send(self.topic.format(device=spec.device),
                                                frame_payload(ts, frame, spec.names))
        return n


def write_csv(path: str, spec: GridSpec, n_steps: int, seed: int, start_ns: int = 1_700_000_000 * NS_PER_S) -> None:
    """A training CSV: ``timestamp`` (ISO) and one column per pixel; the dead pixel empty once dead."""
    import csv
    from datetime import UTC, datetime

    ts, values = frames(spec, start_ns, n_steps, seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", *spec.names])
        for t, row in zip(ts.tolist(), values.tolist(), strict=True):
            when = datetime.fromtimestamp(t // NS_PER_S, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            w.writerow([when, *("" if v != v else repr(v) for v in row)])


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tools.sim.grid", description="Write a simulated 8x8 IR grid CSV.")
    p.add_argument("--out", required=True, help="CSV path to write")
    p.add_argument("--steps", type=int, default=6000, help="frames (default 6000)")
    p.add_argument("--cadence", type=float, default=60.0, help="seconds per frame (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--dead-after", type=int, default=2000, help="step at which pixel r2c5 dies (reads NaN)")
    args = p.parse_args(argv)
    write_csv(args.out, GridSpec(cadence_s=args.cadence, dead_after_step=args.dead_after), args.steps, args.seed)
    print(f"wrote {args.steps} frames of 8x8 to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
