"""``sensorcast simulate``: publish realistic multi-device sensor streams to MQTT.

Readings go to ``sensors/{device}/{quantity}`` (QoS 1) as ``{"ts": ..., "value": ...}``,
paced by the wall clock; ``--backfill`` first publishes that much history at once (so a
model can warm up), ``--labels`` writes the ground truth of every anomaly published.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from service.config import Settings
from service.records import NS_PER_S
from tools.sim.grid import GridPublisher, GridSpec
from tools.sim.live import FleetClock, TruthLog
from tools.sim.mqttout import TS_FORMATS, MqttOut, PublishError
from tools.sim.runner import SimRunner
from tools.sim.signals import (
    ANOMALY_KINDS,
    CLASSIC_KINDS,
    DEMO_COMPRESSION,
    DEMO_SEED,
    QUANTITIES,
    fleet,
)

log = logging.getLogger("sensorcast.simulate")


def _devices(text: str) -> int | list[str]:
    if text.isdigit():
        return int(text)
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give a device count or comma-separated names")
    return names


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mqtt-url", help="Broker URL (default: SENSORCAST_MQTT__URL or settings).")
    p.add_argument("--client-id", default="sensorcast-sim", help="MQTT client id.")
    p.add_argument("--topic", default="sensors/{device}/{quantity}", help="Topic template.")
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1, help="MQTT QoS of the publishes.")
    p.add_argument("--devices", type=_devices, default=3, help="Count (dev01..) or comma-separated names (the demo model serves dev<digits> only; "
                   "bind it for other names: SENSORCAST_MODELS__BINDINGS).")
    p.add_argument(
        "--quantities", type=_csv, default=["temperature", "humidity", "power"],
        help=f"Comma-separated, from {', '.join(sorted(QUANTITIES))}.",
    )
    p.add_argument("--rate", type=float, default=1.0, help="Readings per second per stream.")
    p.add_argument(
        "--compression", type=float, default=DEMO_COMPRESSION,
        help="Signal seconds per wall second (300: a signal day every 4.8 minutes).",
    )
    p.add_argument("--duration", type=float, default=0.0, help="Seconds to run (0: until Ctrl-C).")
    p.add_argument("--backfill", type=float, default=0.0, help="Seconds of history published at once first.")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="Random seed: the same seed, the same signals.")
    p.add_argument("--anomalies-per-1k", type=float, default=2.0, help="Random anomalies per 1,000 steps.")
    p.add_argument(
        "--kinds", type=_csv, default=list(CLASSIC_KINDS),
        help=f"Anomaly kinds to inject, from {', '.join(ANOMALY_KINDS)} (default: the first five).",
    )
    p.add_argument("--warmup-steps", type=int, default=0, help="No random anomalies in the first steps.")
    p.add_argument("--gap-rate", type=float, default=0.001, help="Chance per step that a gap starts.")
    p.add_argument("--duplicate-rate", type=float, default=0.002, help="Chance a reading is sent twice.")
    p.add_argument("--jitter", type=float, default=0.05, help="Timestamp jitter, fraction of the cadence.")
    p.add_argument("--bad-rate", type=float, default=0.0, help="Chance of a malformed message per reading.")
    p.add_argument("--ts-format", choices=TS_FORMATS, default="ms", help="How payloads carry the timestamp.")
    p.add_argument("--labels", type=Path, help="Write ground-truth anomalies to this CSV.")
    p.add_argument("--quiet", action="store_true", help="No progress lines.")
    p.add_argument("--grids", type=int, default=0, help="Also simulate this many 8x8 infrared grids (ir01..) over a "
                   "warming machine, one frame per --rate step: each pixel r{row}c{col} a quantity of the device "
                   "(a JSON named-fields payload when --topic has no {quantity}); pixel r2c5 dies at step 2000.")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()  # fields come from the environment
    if args.mqtt_url:
        settings.mqtt.url = args.mqtt_url
    for name, value, ok in (
        ("--rate", args.rate, args.rate > 0), ("--duration", args.duration, args.duration >= 0),
        ("--backfill", args.backfill, args.backfill >= 0), ("--bad-rate", args.bad_rate, 0 <= args.bad_rate <= 1),
    ):
        if not ok:
            print(f"sensorcast simulate: {name} {value:g} is out of range", file=sys.stderr)
            return 2
    try:
        specs = fleet(
            args.devices, args.quantities,
            cadence_s=1.0 / args.rate, compression=args.compression,
            anomalies_per_1k=args.anomalies_per_1k, kinds=tuple(args.kinds),
            anomaly_free_steps=args.warmup_steps, gap_rate=args.gap_rate,
            duplicate_rate=args.duplicate_rate, jitter=args.jitter,
        )
    except ValueError as e:
        print(f"sensorcast simulate: {e}", file=sys.stderr)
        return 2
    start_ns = time.time_ns() - int(args.backfill * NS_PER_S)
    clock = FleetClock(specs, start_ns, args.seed)
    out = MqttOut(settings.mqtt, args.client_id, qos=args.qos)
    try:
        out.start()
    except PublishError as e:
        print(f"sensorcast simulate: {e}", file=sys.stderr)
        return 1
    truth = TruthLog(args.labels, clock)
    runner = SimRunner(clock, out, topic=args.topic, ts_format=args.ts_format, bad_rate=args.bad_rate, truth=truth)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    until = time.time_ns() + int(args.duration * NS_PER_S) if args.duration > 0 else None
    log.info(
        "publishing %d streams (%s) at %.3g/s each to %s, %s",
        len(specs), ", ".join(s.stream_id for s in specs[:4]) + (" ..." if len(specs) > 4 else ""),
        args.rate, settings.mqtt.url, f"for {args.duration:g} s" if until else "until Ctrl-C",
    )
    reporter = threading.Thread(target=_report, args=(runner, stop, args.quiet), daemon=True)
    reporter.start()
    grid_thread = None
    if args.grids > 0:
        grids = GridPublisher([GridSpec(device=f"ir{i + 1:02d}", cadence_s=1.0 / args.rate, compression=args.compression)
                               for i in range(args.grids)], start_ns, args.seed, out.send, topic=args.topic)
        grid_thread = threading.Thread(target=_grids, args=(grids, until, stop), daemon=True)
        grid_thread.start()
    try:
        counts = runner.run(until, stop)
    finally:
        stop.set()
        if grid_thread is not None:
            grid_thread.join(timeout=5)  # its last frames go out before the flush
        flushed = out.stop()
        truth.close()
    log.info(
        "done: %d readings, %d malformed, %d anomalies, %d refused by the client, %s",
        counts.published, counts.bad, counts.anomalies, out.stats.refused,
        "all acknowledged" if flushed else f"{out.pending} not acknowledged",
    )
    return 0 if flushed and out.stats.refused == 0 else 1


def _grids(grids: GridPublisher, until: int | None, stop: threading.Event) -> None:
    while not stop.is_set():
        now = time.time_ns()
        grids.step(now if until is None else min(now, until))
        if stop.wait(0.25):
            if until is not None:  # the frames up to the end of the run
                grids.step(min(time.time_ns(), until))
            return


def _report(runner: SimRunner, stop: threading.Event, quiet: bool) -> None:
    while not stop.wait(10.0):
        if not quiet:
            c = runner.counts
            log.info("%d readings published, %d anomalies so far", c.published, c.anomalies)
