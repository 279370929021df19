"""``sensorcast demo``: the whole job on a bare machine, in one process.

    embedded MQTT broker (amqtt)  <──  simulator (tools/sim, scheduled anomalies)
             │
             v
    serve pipeline: ingest ──> SQLite ──> engine (demo model, ONNX) ──> alerts (MQTT)
             │                                                       │
             └── REST API + dashboard on http://127.0.0.1:8080 ──────┘
                                                                     v
                                            this terminal: forecasts and alerts

The simulator first publishes enough history for the model's warm-up (so forecasts
start within seconds), then streams live, with an anomaly on a different stream every
``--every`` seconds (the first one 15 s after start) so alerts show up within a minute.
The terminal reads the service the way a user would: forecasts over REST, alerts from
the MQTT alert topic. Ctrl-C (or ``--duration``) stops everything and removes the
temporary data directory unless ``--data-dir`` was given.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.alerts.payload import topic_filter
from service.records import NS_PER_S

log = logging.getLogger("sensorcast.demo")

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
# The first kinds are the ones a one-step forecaster flags for sure: a spike jumps away
# and back (two anomalous steps, enough for the default 2-of-3 rule), a variance burst
# keeps jumping. A level shift is flagged at its start, a slow drift or a stuck sensor
# only by a model that has learnt the cycle well.
KINDS_IN_TURN = ("spike", "variance_burst", "level_shift", "drift", "stuck")
# (duration in steps, size in daily amplitudes of the quantity). Sized against the signal,
# not its noise: a model's predicted spread includes what it has not learnt of the daily
# cycle, and a sensor fault of a few degrees is what an operator wants flagged. For a
# variance burst the size is the standard deviation of the extra noise.
_SHAPE = {
    "spike": (1, 3.0),
    "variance_burst": (30, 1.5),
    "level_shift": (25, 2.5),
    "drift": (45, 3.0),
    "stuck": (40, 0.0),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=0.0, help="Stop after this many seconds (0: until Ctrl-C).")
    p.add_argument("--host", default="127.0.0.1", help="Bind address of the API and dashboard.")
    p.add_argument(
        "--port", type=int, default=None,
        help="API/dashboard port (default 8080, or any free port when 8080 is taken; 0: any free port).",
    )
    p.add_argument("--mqtt-port", type=int, default=0, help="Embedded broker port (0: any free port).")
    p.add_argument(
        "--mqtt-url", help="Use this broker (e.g. a local mosquitto, MQTT 5) instead of the embedded one."
    )
    p.add_argument("--models", type=Path, help="Models directory (default: ./models, else the shipped one).")
    p.add_argument("--model", help="Model name to run (default: 'demo' when present, else the first).")
    p.add_argument("--devices", type=int, default=3, help="Simulated devices (dev01, dev02...).")
    p.add_argument("--quantities", default="temperature,humidity,power", help="Comma-separated quantities per device.")
    p.add_argument("--every", type=float, default=45.0, help="Seconds between injected anomalies.")
    p.add_argument("--print-every", type=float, default=5.0, help="Seconds between forecast printouts.")
    p.add_argument("--data-dir", type=Path, help="Keep data here (default: a temporary directory).")
    p.add_argument("--seed", type=int, default=None, help="Simulator seed (default: the demo preset's).")


# ---- finding the model ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoModel:
    models_dir: Path
    name: str
    version: str
    cadence_s: float
    warmup_steps: int
    horizon: int


def find_model(models_dir: Path | None, name: str | None) -> DemoModel:
    """The newest valid model (``demo`` preferred) under the models directory."""
    from service.errors import ModelError
    from service.runtime.manifest import load_manifest

    candidates = [models_dir] if models_dir else [Path("models"), REPO_MODELS]
    problems: list[str] = []
    for d in candidates:
        if not d.is_dir():
            continue
        found = []
        for mf in sorted(d.glob("*/*/manifest.json")):
            try:
                m = load_manifest(mf.parent)
            except ModelError as e:
                problems.append(str(e))
                continue
            found.append(m)
        if name is not None:
            found = [m for m in found if m.name == name]
        elif any(m.name == "demo" for m in found):
            found = [m for m in found if m.name == "demo"]
        if found:
            m = max(found, key=lambda m: m.created_at)
            return DemoModel(d.resolve(), m.name, m.version, m.cadence_s, m.warmup_steps, m.horizon)
    where = ", ".join(str(c) for c in candidates)
    hint = "; ".join(problems[:3])
    raise SystemExit(
        f"sensorcast demo: no {'model ' + repr(name) if name else 'usable model'} found in {where}"
        + (f" ({hint})" if hint else "")
        + ". The repository ships models/demo/; or train one: sensorcast train --help"
    )


# ---- the service, in this process ----------------------------------------------------


DEFAULT_PORT = 8080


def _listen(host: str, port: int | None) -> socket.socket:
    """A listening socket on ``port``; without one, 8080 or else any free port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, DEFAULT_PORT if port is None else port))
    except OSError as e:
        if port is None:  # 8080 is taken (another service, another demo): any port will do
            sock.bind((host, 0))
        else:
            sock.close()
            raise SystemExit(f"sensorcast demo: cannot listen on {host}:{port} ({e.strerror}); try --port 0") from e
    sock.listen(128)
    return sock


class ApiServer:
    """uvicorn in a thread, on a socket we bound (so port 0 works and we know the port)."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        self.sock = sock
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=10
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)

    def start(self, timeout_s: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise SystemExit("sensorcast demo: the API server failed to start (see the log above)")
            if time.monotonic() > deadline:
                raise SystemExit(f"sensorcast demo: the API server did not start within {timeout_s:.0f}s")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        self.sock.close()


class AlertWatch:
    """Subscribes to the alert topic and prints every event, like an operator would see it."""

    def __init__(self, settings: Any, topic: str, out: Terminal) -> None:
        from service.mqtt import make_client

        self.out = out
        self.client, addr = make_client(settings, "sensorcast-demo-terminal")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect_async(addr.host, addr.port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        import orjson

        try:
            a = orjson.loads(msg.payload)
            self.out.alert(a)
        except Exception:  # a malformed alert must not kill the terminal
            log.warning("unreadable alert on %s: %r", msg.topic, bytes(msg.payload)[:200])

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Terminal:
    """The demo's output: one line per event, easy to read and to grep."""

    lines: int = 0
    forecasts: int = 0
    alerts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)
            self.lines += 1

    def alert(self, a: dict[str, Any]) -> None:
        self.alerts += 1
        state = str(a.get("state", "?")).upper()
        kind = a.get("kind") or a.get("check") or "anomaly"
        if a.get("check", "anomaly") != "anomaly":  # data quality and predicted breach: no score or band
            detail = ", ".join(f"{k} {v}" for k, v in (a.get("extra") or {}).items())
            self.say(f"ALERT {state:8s} {kind:14s} {a.get('stream_id')} at {str(a.get('time', ''))[11:19]}Z: "
                     f"value {_num(a.get('value'))}" + (f" ({detail})" if detail else ""))
            return
        self.say(
            f"ALERT {state:8s} {kind:14s} {a.get('stream_id')} at {str(a.get('time', ''))[11:19]}Z: "
            f"value {_num(a.get('value'))}, expected {_num(a.get('expected'))} "
            f"[{_num(a.get('lower'))}, {_num(a.get('upper'))}], score {_num(a.get('score'))} "
            f"(model {a.get('model')}/{a.get('model_version')})"
        )

    def forecast(self, fc: dict[str, Any], stream: dict[str, Any]) -> None:
        self.forecasts += 1
        mean = [row[0] for row in fc.get("mean") or []]
        lower = [row[0] for row in fc.get("lower") or []] or [None] * len(mean)
        upper = [row[0] for row in fc.get("upper") or []] or [None] * len(mean)
        if not mean:
            return
        h = len(mean)
        self.say(
            f"forecast {fc.get('stream_id')}: now {_num(stream.get('last_value'))} "
            f"-> next {_num(mean[0])} [{_num(lower[0])}, {_num(upper[0])}], "
            f"+{h} steps {_num(mean[-1])} [{_num(lower[-1])}, {_num(upper[-1])}] "
            f"(score {_num(stream.get('score'))}, {stream.get('status')})"
        )


def _num(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, int | float) else "-"


# ---- the demo ------------------------------------------------------------------------


def schedule(stream_ids: list[str], first_step: int, every_steps: int, count: int) -> list[tuple[str, Any]]:
    """Anomalies in turn: a different stream and kind each time, ``every_steps`` apart."""
    from tools.sim.signals import QUANTITIES, Scheduled

    out: list[tuple[str, Any]] = []
    for i in range(count):
        kind = KINDS_IN_TURN[i % len(KINDS_IN_TURN)]
        duration, size = _SHAPE[kind]
        sign = -1.0 if (i // len(KINDS_IN_TURN)) % 2 else 1.0
        if kind == "variance_burst":
            sign = 1.0  # a noise multiplier, not an offset
        sid = stream_ids[i % len(stream_ids)]
        q = QUANTITIES[sid.rsplit("/", 1)[1]]
        sigmas = size * q.daily_amp / q.noise  # Scheduled magnitudes are in noise sigmas
        out.append((sid, Scheduled(first_step + i * every_steps, kind, duration, sign * sigmas)))
    return out


@contextlib.contextmanager
def _data_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="sensorcast-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, before anything starts; None when fine."""
    from tools.sim.signals import QUANTITIES

    quantities = [q.strip() for q in args.quantities.split(",") if q.strip()]
    unknown = [q for q in quantities if q not in QUANTITIES]
    if not quantities or unknown:
        return f"--quantities {args.quantities!r}: use some of {', '.join(sorted(QUANTITIES))}"
    if args.devices < 1:
        return f"--devices must be >= 1, found {args.devices}"
    if args.duration < 0 or args.every <= 0 or args.print_every <= 0:
        return "--duration must be >= 0, --every and --print-every > 0"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        print(f"sensorcast demo: {problem}", file=sys.stderr)
        return 2
    model = find_model(args.models, args.model)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _data_dir(args.data_dir) as data:
        return _run(args, model, data, stop)


def _run(args: argparse.Namespace, model: DemoModel, data: Path, stop: threading.Event) -> int:
    import httpx

    from service.api.app import create_app
    from service.config import Settings
    from tools.localservers import free_port
    from tools.sim.broker import EmbeddedBroker
    from tools.sim.live import FleetClock, SimReading, TruthLog
    from tools.sim.mqttout import MqttOut
    from tools.sim.runner import SimRunner
    from tools.sim.signals import DEMO_SEED, demo_fleet

    t_start = time.monotonic()
    term = Terminal()
    broker: EmbeddedBroker | None = None
    if args.mqtt_url:
        mqtt_url, protocol, where = args.mqtt_url, "5", f"broker {args.mqtt_url}"
    else:
        broker = EmbeddedBroker(port=args.mqtt_port or free_port())
        broker.start()
        # amqtt speaks MQTT 3.1.1 only.
        mqtt_url, protocol, where = broker.url, "3.1.1", f"embedded broker {broker.url}"
    sock = _listen(args.host, args.port)
    port = int(sock.getsockname()[1])
    overrides: dict[str, Any] = {  # the rest comes from defaults and the environment
        "roles": "ingest,inference,api",
        # A short session expiry: a demo must not leave a week-long queue on a real broker.
        "mqtt": {"url": mqtt_url, "client_id": "sensorcast-demo-ingest", "protocol": protocol,
                 "session_expiry_s": 60},
        "store": {"url": f"sqlite:///{data / 'sensorcast.db'}", "spool_dir": data / "spool"},
        "models": {
            "dir": model.models_dir,
            "bindings": [{"model": model.name, "version": model.version}],
            "watch": False,
        },
        "streams": {"checkpoint_dir": data / "state", "settings_path": data / "stream_settings.sqlite"},
        "alerts": {"outbox_dir": data / "outbox", "history_path": data / "alerts.sqlite"},
        "anomaly": {"cooldown_s": 20.0},
        "api": {"host": args.host, "port": port},
    }
    settings = Settings(**overrides)
    api = ApiServer(create_app(settings), sock)
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{port}"
    sim_thread: threading.Thread | None = None
    out: MqttOut | None = None
    watch: AlertWatch | None = None
    truth: TruthLog | None = None
    try:
        api.start()
        watch = AlertWatch(settings.mqtt, topic_filter(settings.alerts.topic), term)
        quantities = [q.strip() for q in args.quantities.split(",") if q.strip()]
        ids = [f"dev{i + 1:02d}/{q}" for i in range(args.devices) for q in quantities]
        cadence = model.cadence_s
        backfill = model.warmup_steps + 30  # enough history that forecasts start at once
        first = backfill + max(1, round(15.0 / cadence))
        every = max(1, round(args.every / cadence))
        specs = demo_fleet(
            args.devices, quantities, scheduled=schedule(ids, first, every, 2000), cadence_s=cadence
        )
        start_ns = time.time_ns() - backfill * round(cadence * NS_PER_S)
        clock = FleetClock(specs, start_ns, DEMO_SEED if args.seed is None else args.seed)
        out = MqttOut(settings.mqtt, "sensorcast-demo-sim")
        out.start()
        truth = log_ = TruthLog(data / "truth.csv", clock)
        shown = [0]

        def announce(r: SimReading) -> None:
            # Say when each injected anomaly goes out, so alerts can be matched to it.
            while shown[0] < len(log_.rows):
                sid, kind, _, _, start, _, _ = log_.rows[shown[0]]
                shown[0] += 1
                term.say(f"INJECT  {kind} on {sid} at {start[11:19]}Z")

        runner = SimRunner(clock, out, truth=truth, on_reading=announce)
        sim_thread = threading.Thread(target=runner.run, args=(None, stop), name="simulator", daemon=True)
        sim_thread.start()
        term.say(
            f"sensorcast demo: {len(specs)} simulated streams, model {model.name}/{model.version} "
            f"(cadence {cadence:g} s, warm-up {model.warmup_steps} steps), {where}"
        )
        term.say(f"dashboard: {base}/   API docs: {base}/docs   (Ctrl-C stops)")
        term.say(
            f"first anomaly ({KINDS_IN_TURN[0]}) injected in ~15 s on {ids[0]}, then one every {args.every:g} s"
        )
        until = time.monotonic() + args.duration if args.duration > 0 else None
        with httpx.Client(base_url=base, timeout=5.0) as http:
            while not stop.wait(args.print_every):
                _print_round(http, term)
                if until is not None and time.monotonic() >= until:
                    break
    finally:
        stop.set()
        if sim_thread is not None:
            sim_thread.join(5)
        if out is not None:
            out.stop(flush_timeout_s=2.0)
        if truth is not None:
            truth.close()
        time.sleep(0.5)  # let the last alerts reach the terminal
        if watch is not None:
            watch.stop()
        api.stop()
        if broker is not None:
            broker.stop()
    term.say(
        f"demo stopped after {time.monotonic() - t_start:.0f} s: {term.forecasts} forecasts and "
        f"{term.alerts} alert events shown"
    )
    return 0


def _print_round(http: Any, term: Terminal) -> None:
    try:
        streams = http.get("/v1/streams").json()
    except Exception as e:
        term.say(f"(API not answering: {e})")
        return
    warming = [s for s in streams if s.get("status") == "warming"]
    if warming:
        w = warming[0]["warm_up"]
        term.say(f"{len(warming)} of {len(streams)} streams warming up ({w['have']} / {w['need']})")
    ready = [s for s in streams if s.get("status") in ("ok", "firing")]
    # A few streams per round keep the terminal readable; firing ones first.
    ready.sort(key=lambda s: (s.get("status") != "firing", s.get("id")))
    for s in ready[:3]:
        try:
            r = http.get(f"/v1/streams/{s['id']}/forecast")
        except Exception:
            continue
        if r.status_code == 200:
            term.forecast(r.json(), s)


if __name__ == "__main__":  # pragma: no cover
    ns = argparse.ArgumentParser()
    add_arguments(ns)
    sys.exit(run(ns.parse_args()))
