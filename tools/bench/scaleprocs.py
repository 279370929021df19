"""The processes of the scale-out benchmark (tools/bench/scale.py): the in-process baseline
and the real ``sensorcast serve --roles inference,api`` replicas on NATS.

A replica's CPU is read from ``/proc/<pid>/stat`` (utime + stime) and its progress from
its own ``/metrics`` (``sensorcast_steps_total``: one stream-step per reading here, each
reading filling its own bucket), both sampled at the same moments, so CPU per step is a
ratio of two deltas over one window and start-up costs stay out of it. The end of a catch-up
is found in ``/proc`` (the replicas go idle) and confirmed by ``/metrics``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from nats.aio.msg import Msg

from service.config import NatsSettings
from tools.bench import natsload as nl
from tools.bench.serveproc import ServeProcess, proc_cpu_s
from tools.localservers import free_port

STEPS = "sensorcast_steps_total"
IDLE_WINDOW_S = 1.0  # CPU rate measured over this long
IDLE_CORES = 0.15  # below this a replica is idle (heartbeats, empty fetches: a few per cent of a core)
SCRAPE_EVERY_S = 5.0  # /metrics at most this often while confirming
FORECAST_TOPIC = "sensorcast/forecasts/{stream}"
_DEVICE = re.compile(r"dev\d+")


def baseline(fleet: nl.Fleet, rounds: int, models: Path, work: Path) -> dict[str, Any]:
    """CPU per reading of one Engine fed the backlog's readings in this thread (decode timed apart)."""
    from service.config import Settings
    from service.ingest.decode import Decoder
    from service.metrics import Metrics
    from service.runtime.registry import ModelRegistry
    from service.streams.engine import Engine
    from tools.bench.inference import _build

    _build(models, "step", 96)  # the model `sensorcast bench inference` times
    settings = Settings.model_validate({
        "models": {"dir": str(models), "threads": 1, "watch": False},
        "streams": {"checkpoint_dir": str(work / "state"), "max_streams": 0},
    })
    engine = Engine(settings, ModelRegistry(models, threads=1), None, Metrics())
    decoder = Decoder(settings.ingest)
    decode_s = engine_s = 0.0
    steps = 0
    first_s = first_engine_s = 0.0  # round 0: every stream is created (bound to its model, state allocated)
    for k in range(rounds):
        msgs = [(s.replace(".", "/"), p) for s, p in fleet.messages([k])]  # the topic a replica decodes
        ts = nl.T0_NS + k * nl.CADENCE_NS
        t0 = time.thread_time()
        readings = []
        for topic, payload in msgs:
            readings.extend(decoder.decode(topic, payload, ts).readings)
        t1 = time.thread_time()
        engine.accept(readings)
        steps += engine.tick(ts)
        t2 = time.thread_time()
        decode_s += t1 - t0
        engine_s += t2 - t1
        if k == 0:
            first_s, first_engine_s = t2 - t0, t2 - t1
    n = fleet.streams * rounds
    if steps != n:
        raise RuntimeError(f"baseline: {steps} stream-steps for {n} readings")
    return {"engine_us": round(engine_s / n * 1e6, 3), "full_us": round((engine_s + decode_s) / n * 1e6, 3),
            "steady_engine_us": round((engine_s - first_engine_s) / max(1, n - fleet.streams) * 1e6, 3),
            "steady_us": round((engine_s + decode_s - first_s) / max(1, n - fleet.streams) * 1e6, 3),
            "streams": fleet.streams, "readings": n}


def _steps(p: ServeProcess) -> float | None:
    try:
        return p.metric(STEPS)
    except httpx.HTTPError:
        return None


class Replicas:
    """``sensorcast serve --roles inference,api`` processes on the benchmark's NATS servers."""

    def __init__(self, work: Path, url: str, models: Path, settings: NatsSettings, server_pids: list[int]) -> None:
        self.work, self.url, self.models, self.settings = work, url, models, settings
        self.server_pids = server_pids
        self.procs: dict[str, ServeProcess] = {}
        self._run = 0

    def _env(self, d: Path, name: str, **extra: str) -> dict[str, str]:
        s = self.settings
        env = {
            "SENSORCAST_ROLES": "inference,api",
            "SENSORCAST_NATS__URL": self.url,
            "SENSORCAST_NATS__PARTITIONS": str(s.partitions),
            "SENSORCAST_NATS__STREAM": s.stream,
            "SENSORCAST_NATS__REPLICAS": str(s.replicas),
            "SENSORCAST_NATS__REPLICA_ID": name,
            "SENSORCAST_NATS__LEASE_TTL_S": str(s.lease_ttl_s),
            "SENSORCAST_NATS__CHECKPOINT_INTERVAL_S": str(s.checkpoint_interval_s),
            "SENSORCAST_MODELS__DIR": str(self.models),
            "SENSORCAST_MODELS__WATCH": "false",
            "SENSORCAST_MODELS__THREADS": "1",
            "SENSORCAST_STREAMS__MAX_STREAMS": "0",
            "SENSORCAST_STREAMS__CHECKPOINT_DIR": str(d / "state"),
            "SENSORCAST_STREAMS__SETTINGS_PATH": str(d / "stream_settings.sqlite"),
            "SENSORCAST_STORE__URL": f"sqlite:///{d / 'store.sqlite'}",
            "SENSORCAST_STORE__SPOOL_DIR": str(d / "spool"),
            "SENSORCAST_ALERTS__OUTBOX_DIR": str(d / "outbox"),
            "SENSORCAST_ALERTS__HISTORY_PATH": str(d / "alerts.sqlite"),
            "SENSORCAST_API__HOST": "127.0.0.1",
            "SENSORCAST_API__PORT": str(free_port()),
            "SENSORCAST_LOG_LEVEL": "WARNING",
        }
        env.update(extra)
        return env

    def spawn(self, names: list[str], **extra: str) -> list[ServeProcess]:
        """Start the replicas together (each waits for its own /readyz)."""
        self._run += 1
        procs = []
        for name in names:
            d = self.work / f"run{self._run}" / name
            d.mkdir(parents=True)
            procs.append(ServeProcess(self._env(d, name, **extra), d / "serve.log"))
        errors: list[BaseException] = []

        def start(p: ServeProcess) -> None:
            try:
                p.start(timeout_s=120)
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=start, args=(p,)) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.procs.update(zip(names, procs, strict=True))
        if errors:
            raise errors[0]
        return procs

    def _server_cpu(self) -> float:
        return sum(proc_cpu_s(pid) for pid in self.server_pids)

    def _sample(self, procs: list[ServeProcess]) -> tuple[float, list[float], list[float]]:
        while True:  # CPU and steps read together: a replica too busy to answer is asked again
            t, cpu = time.monotonic(), [p.cpu_seconds() for p in procs]
            steps = [_steps(p) for p in procs]
            if all(s is not None for s in steps):
                return t, cpu, [s for s in steps if s is not None]

    def _wait_stepped(self, procs: list[ServeProcess], expected: int, deadline: float) -> float:
        """Wait until every replica is idle with ``expected`` steps done; returns when they were last busy.

        Progress is watched in /proc (CPU), not by polling /metrics: a scrape walks every stream
        (sensorcast_streams{status}), which at 100k streams would cost the replicas more than a
        little. /metrics is read only to confirm, when all of them look idle.
        """
        hist: list[tuple[float, list[float]]] = []
        t_busy, next_scrape = time.monotonic(), 0.0
        while True:
            now = time.monotonic()
            for p in procs:
                if p.proc is not None and p.proc.poll() is not None:
                    raise RuntimeError(f"replica exited with {p.proc.returncode}: {p.tail()}")
            hist.append((now, [p.cpu_seconds() for p in procs]))
            while len(hist) > 2 and now - hist[1][0] >= IDLE_WINDOW_S:
                hist.pop(0)
            t_old, cpu_old = hist[0]
            if now - t_old >= IDLE_WINDOW_S:
                rates = [(c - o) / (now - t_old) for c, o in zip(hist[-1][1], cpu_old, strict=True)]
                if max(rates) > IDLE_CORES:
                    t_busy = now
                elif now >= next_scrape:
                    got = [_steps(p) for p in procs]
                    if all(s is not None for s in got) and sum(s for s in got if s is not None) >= expected:
                        return t_busy
                    next_scrape = time.monotonic() + SCRAPE_EVERY_S
            if now > deadline:
                got = [_steps(p) for p in procs]
                raise TimeoutError(f"{sum(s or 0 for s in got):.0f} of {expected} readings stepped when the phase "
                                   "timed out")
            time.sleep(0.2)

    def catch_up(self, n: int, expected: int, link: Any, timeout_s: float, stop_after: bool = True) -> dict[str, Any]:
        """``n`` fresh replicas work through the backlog; CPU and steps over ready -> caught up."""
        t_spawn = time.monotonic()
        names = [f"r{i + 1}" for i in range(n)]
        procs = self.spawn(names)
        t0, cpu0, steps0 = self._sample(procs)
        srv0 = self._server_cpu()
        error = None
        try:
            t_done = self._wait_stepped(procs, expected, t_spawn + timeout_s)
        except TimeoutError as e:  # reported with what was measured, and the next phase runs
            error, t_done = str(e), time.monotonic()
        _, cpu1, steps1 = self._sample(procs)
        srv1 = self._server_cpu()
        owners = link.run(nl.lease_owners(link.js, self.settings))
        # The leases' own line ("p3 not renewed for 6.1 s: lost"), not the worker's "lease gone (lost,
        # released or not renewed in time)" that follows it: counting both doubled the figure.
        lost = sum(p.tail(10**9).count("not renewed for") for p in procs)
        per = []
        d_steps = [b - a for a, b in zip(steps0, steps1, strict=True)]
        for name, p, c0, c1, ds, s1 in zip(names, procs, cpu0, cpu1, d_steps, steps1, strict=True):
            per.append({"name": name, "partitions": sum(1 for o in owners.values() if o == name),
                        "steps": int(ds), "steps_total": int(s1), "share": round(ds / max(1.0, sum(d_steps)), 3), "cpu_s": round(c1 - c0, 2),
                        "cpu_us": round((c1 - c0) / max(1.0, ds) * 1e6, 2), "rss_mb": p.rss_bytes() / 2**20})
        if stop_after:
            self.stop_all()
        window = max(1e-9, t_done - t0)
        return {"replicas": n, "window_s": round(window, 2), "total_s": round(t_done - t_spawn, 2),
                "steps_per_s": round(sum(d_steps) / window), "backlog_rate": round(expected / (t_done - t_spawn)),
                "cpu_us": round((sum(cpu1) - sum(cpu0)) / max(1.0, sum(d_steps)) * 1e6, 2),
                "server_cpu_us": round((srv1 - srv0) / max(1.0, sum(d_steps)) * 1e6, 2),
                "replayed": int(sum(steps1) - expected), "per_replica": per, "leases_lost": lost, "error": error}

    def restore(self, expected: int, link: Any, timeout_s: float) -> dict[str, Any]:
        """One new replica takes every partition from the checkpoints and replays what came after."""
        t_spawn = time.monotonic()
        procs = self.spawn(["c1"])
        t0, cpu0, steps0 = self._sample(procs)
        t_done = self._wait_stepped(procs, expected, t_spawn + timeout_s)
        _, cpu1, steps1 = self._sample(procs)
        self.stop_all()
        steps = int(steps1[0])
        window = t_done - t0  # from ready on: what was replayed before the API answered is not timed
        d = steps1[0] - steps0[0]
        timed = window >= 1.0 and d >= steps / 2
        return {"steps": steps, "new_readings": expected, "ready_s": round(t0 - t_spawn, 2),
                "total_s": round(t_done - t_spawn, 2), "rate": round(d / window) if timed else None,
                "timed_steps": int(d), "cpu_us": round((cpu1[0] - cpu0[0]) / max(1.0, d) * 1e6, 2)}

    def failover(self, fleet: nl.Fleet, rate: float, link: Any, settings: NatsSettings,
                 timeout_s: float) -> dict[str, Any]:
        """Two replicas on live readings; kill -9 one; how long until its partitions forecast again."""
        P = settings.partitions
        link.run(link.js.purge_stream(settings.stream))
        link.run(nl.reset_ownership(link.js, settings))
        last: dict[int, float] = {}  # partition -> arrival of its latest forecast
        first_after: dict[int, float] = {}
        kill_at = [float("inf")]
        margin = min(1.0, settings.lease_ttl_s / 2)  # forecasts the victim had in flight when it died

        async def on_forecast(msg: Msg) -> None:
            m = _DEVICE.search(msg.subject)
            if m is None:
                return
            p, now = nl.partition_of_device(m.group(0), P), time.monotonic()
            last[p] = now
            if now > kill_at[0] + margin:
                first_after.setdefault(p, now)

        sub = link.run(link.nc.subscribe(FORECAST_TOPIC.replace("/", ".").replace("{stream}", ">"), cb=on_forecast))
        stop = asyncio.Event()
        pub = link.spawn(nl.publish(link.nc, fleet.messages(itertools.count()), rate=rate, stop=stop))
        try:
            procs = self.spawn(["f1", "f2"], SENSORCAST_ALERTS__FORECAST_TOPIC=FORECAST_TOPIC)
            deadline = time.monotonic() + timeout_s
            while True:  # both replicas own their share and every partition forecasts
                owners = link.run(nl.lease_owners(link.js, settings))
                held = [sum(1 for o in owners.values() if o == n) for n in ("f1", "f2")]
                now = time.monotonic()
                fresh = sum(1 for p in range(P) if now - last.get(p, -1e9) < 2.0)
                if min(held) >= P // 2 and fresh == P:
                    break
                if now > deadline or pub.done():
                    raise TimeoutError(f"failover set-up: leases held {held}, {fresh} of {P} partitions forecasting")
                time.sleep(0.25)
            time.sleep(settings.checkpoint_interval_s + 2)  # a checkpoint of every partition exists
            moved = sorted(p for p, o in owners.items() if o == "f1")
            kill_at[0] = time.monotonic()
            procs[0].kill(signal.SIGKILL)
            lease_moved: float | None = None
            while time.monotonic() < kill_at[0] + timeout_s:
                now = time.monotonic()
                if lease_moved is None:
                    owners = link.run(nl.lease_owners(link.js, settings))
                    if all(owners.get(p) == "f2" for p in moved):
                        lease_moved = now - kill_at[0]
                if all(p in first_after for p in moved) and lease_moved is not None:
                    break
                time.sleep(0.2)
            if not all(p in first_after for p in moved):
                raise TimeoutError(f"failover: {len(first_after)} of {len(moved)} moved partitions forecast again")
        finally:
            link.loop.call_soon_threadsafe(stop.set)
            link.run(sub.unsubscribe())
        sent = pub.result(30)
        self.stop_all()
        return {"moved": moved, "lease_moved_s": round(lease_moved if lease_moved is not None else float("nan"), 2),
                "first_forecast_s": round(min(first_after[p] for p in moved) - kill_at[0], 2),
                "all_forecast_s": round(max(first_after[p] for p in moved) - kill_at[0], 2),
                "live_rate": round(sent.rate), "live_streams": fleet.streams}

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.close()
        self.procs.clear()

    def close(self) -> None:
        for p in self.procs.values():
            p.kill(signal.SIGKILL)
            p.http.close()
        self.procs.clear()
