"""The real ``sensorcast serve`` with every secret from a file: API keys (read and write
scopes), an InfluxDB password for an influxd with ``auth-enabled`` and an admin user.

Proves: scopes are enforced; the authenticated store works (and refuses a wrong
password without echoing it); model names cannot traverse out of the models directory;
no secret appears in the service log (at DEBUG), in ``/metrics`` or in any error body,
and no filesystem path in an error body. Also checks the container image runs as a
non-root user and the compose stack's public bind comes with keys.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from service.api.auth import ApiKeys, check_exposure
from service.config import ApiSettings, StoreSettings
from service.errors import ConfigError, StoreError
from service.records import Reading, StreamKey
from service.store import open_store
from tests.faults.serve_helpers import kit_models, series, serve
from tools.bench.serveproc import ServeProcess
from tools.localservers import INFLUXD, INFLUXD_CONF, Influxd, Mosquitto, free_port

pytestmark = pytest.mark.integration

WRITE_KEY = "wk-5f1e9a0c2b7d4e3f8a6b"
READ_KEY = "rk-0c3d9e8f7a6b5c4d3e2f"
INFLUX_USER = "admin"
INFLUX_PASSWORD = "influx-Pw-88c0d1e2f3"
REPO = Path(__file__).resolve().parents[2]


def start_auth_influxd() -> Influxd:
    workdir = Path(tempfile.mkdtemp(prefix="sc-influx-auth-"))
    port, rpc = free_port(), free_port()
    conf = INFLUXD_CONF.format(port=port, rpc=rpc, dir=workdir).replace("[http]\n", "[http]\n  auth-enabled = true\n")
    (workdir / "influxd.conf").write_text(conf)
    server = Influxd(argv=[INFLUXD, "-config", str(workdir / "influxd.conf")], port=port, workdir=workdir,
                     extra_ports=[rpc])
    server.start()
    # With no user yet, influxd lets exactly this statement through unauthenticated.
    q = f"CREATE USER {INFLUX_USER} WITH PASSWORD '{INFLUX_PASSWORD}' WITH ALL PRIVILEGES"
    urllib.request.urlopen(f"{server.url}/query", data=urllib.parse.urlencode({"q": q}).encode(), timeout=10).read()
    return server


@pytest.fixture(scope="module")
def auth_influxd() -> Iterator[Influxd]:
    server = start_auth_influxd()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secure_serve(mosquitto: Mosquitto, auth_influxd: Influxd,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    tmp = tmp_path_factory.mktemp("secure")
    for name, secret in (("write.key", WRITE_KEY), ("read.key", READ_KEY), ("influx.pw", INFLUX_PASSWORD)):
        (tmp / name).write_text(secret + "\n")
        (tmp / name).chmod(0o600)
    env = {
        "SENSORCAST_MQTT__CLIENT_ID": "secure-serve",
        "SENSORCAST_STORE__PASSWORD_FILE": str(tmp / "influx.pw"),
        "SENSORCAST_API__API_KEY_FILE": str(tmp / "write.key"),
        "SENSORCAST_API__READ_KEY_FILE": str(tmp / "read.key"),
        "SENSORCAST_LOG_LEVEL": "DEBUG",
    }
    url = f"influxdb://{INFLUX_USER}@127.0.0.1:{auth_influxd.port}/secure"
    with serve(tmp / "svc", mosquitto.url, url, kit_models(tmp / "models"), **env) as sp:
        yield sp


BODIES: list[str] = []


def call(sp: ServeProcess, method: str, path: str, key: str | None = None, **kw: object) -> httpx.Response:
    headers = {"X-API-Key": key} if key is not None else {}
    r = sp.http.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]
    BODIES.append(r.text + " " + " ".join(f"{k}: {v}" for k, v in r.headers.items()))
    return r


def test_scopes_are_enforced(secure_serve: ServeProcess) -> None:
    sp = secure_serve
    assert call(sp, "GET", "/v1/streams").status_code == 401
    assert call(sp, "GET", "/v1/streams", WRITE_KEY[:-1]).status_code == 401  # a prefix is not the key
    assert call(sp, "GET", "/v1/streams", WRITE_KEY + "x").status_code == 401
    assert call(sp, "GET", "/v1/streams", READ_KEY).status_code == 200
    assert call(sp, "GET", "/v1/streams", WRITE_KEY).status_code == 200  # write includes read
    body = {"messages": [{"topic": "sensors/sec/temp", "payload": 1.0}]}
    assert call(sp, "POST", "/v1/readings", READ_KEY, json=body).status_code == 403
    assert call(sp, "POST", "/v1/models/reload", READ_KEY).status_code == 403
    assert call(sp, "POST", "/v1/readings", None, json=body).status_code == 401
    assert call(sp, "GET", "/metrics").status_code == 401
    assert call(sp, "GET", "/healthz").status_code == 200


def test_authenticated_store_takes_readings(secure_serve: ServeProcess, auth_influxd: Influxd, tmp_path: Path) -> None:
    sp = secure_serve
    start = (time.time_ns() // 10**9 - 600) * 10**9
    rs = series(3, 10, start)
    msgs = [{"topic": f"sensors/{r.stream.device}/{r.stream.quantity}", "payload": {"ts": r.ts_ns, "value": r.value}}
            for r in rs]
    r = call(sp, "POST", "/v1/readings", WRITE_KEY, json={"messages": msgs})
    assert r.status_code == 202 and r.json()["accepted"] == len(rs), r.text
    pw = tmp_path / "pw"
    pw.write_text(INFLUX_PASSWORD)
    store = open_store(StoreSettings(url=f"influxdb://{INFLUX_USER}@127.0.0.1:{auth_influxd.port}/secure",
                                     password_file=pw, spool_dir=tmp_path / "spool"))  # type: ignore[call-arg]
    got = store.read_last_many(sorted({x.stream for x in rs}), 100)
    store.close()
    def key(x: Reading) -> tuple[StreamKey, int]:
        return (x.stream, x.ts_ns)

    assert sorted((x for v in got.values() for x in v), key=key) == sorted(rs, key=key)


def test_wrong_store_password_fails_without_echoing_it(auth_influxd: Influxd, tmp_path: Path) -> None:
    wrong = "wrong-Influx-pw-4471"
    pw = tmp_path / "pw"
    pw.write_text(wrong)
    cases = [  # (URL, password file): from a file, and inline in the URL
        (f"influxdb://{INFLUX_USER}@127.0.0.1:{auth_influxd.port}/secure", pw),
        (f"influxdb://{INFLUX_USER}:{wrong}@127.0.0.1:{auth_influxd.port}/secure", None),
    ]
    for url, file in cases:
        store = open_store(StoreSettings(url=url, password_file=file, spool_dir=tmp_path / "s"))  # type: ignore[call-arg]
        with pytest.raises(StoreError) as err:
            store.write([Reading(StreamKey("d", "q"), time.time_ns(), 1.0)])
        store.close()
        assert wrong not in str(err.value) and wrong not in repr(err.value)
        assert "401" in str(err.value) or "authorization" in str(err.value).lower()


@pytest.mark.parametrize("model", ["../../../etc/passwd", "..", "kit/../kit", "/etc", "kit\\..\\..", "%2e%2e", ".", "kit\x00"])
def test_model_names_cannot_leave_the_models_directory(secure_serve: ServeProcess, model: str) -> None:
    body = {"model": model, "values": [[1.0]] * 5, "timestamps_ns": [10**18 + i * 10**9 for i in range(5)]}
    r = call(secure_serve, "POST", "/v1/predict", READ_KEY, json=body)
    assert r.status_code in (404, 422), (model, r.status_code, r.text)
    assert "root:" not in r.text
    listed = call(secure_serve, "GET", "/v1/models", READ_KEY).json()
    assert [m["name"] for m in listed] == ["kit"]


def test_no_secret_in_logs_metrics_or_error_bodies(secure_serve: ServeProcess) -> None:
    sp = secure_serve
    # A few more error paths: malformed bodies, unknown streams, wrong keys in odd places.
    call(sp, "POST", "/v1/readings", WRITE_KEY, content=b"{not json")
    call(sp, "GET", "/v1/streams/no/such", READ_KEY)
    call(sp, "POST", "/v1/predict", READ_KEY, json={"model": "nope", "values": [[1.0]], "timestamps_ns": [1]})
    call(sp, "GET", "/v1/streams", f"{READ_KEY} {WRITE_KEY}")
    call(sp, "POST", "/v1/readings", f"Bearer {WRITE_KEY}x", json={"messages": []})
    metrics = call(sp, "GET", "/metrics", READ_KEY).text
    log = sp.tail(10**7)
    assert "DEBUG" in log  # the log was captured at its most verbose
    for secret in (WRITE_KEY, READ_KEY, INFLUX_PASSWORD):
        assert secret not in log, f"secret in the service log: {secret[:3]}…"
        assert secret not in metrics
        leaked = [b for b in BODIES if secret in b]
        assert not leaked, leaked[:1]


def test_container_runs_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.split(r"^FROM\s", text, flags=re.M)
    final = stages[-1]  # the default target is the last stage
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert users, "the service stage sets no USER: it would run as root"
    assert users[-1] not in ("root", "0", "0:0")
    assert re.search(r"useradd[^\n]*--uid\s+(\d+)", final) and "--uid 0 " not in final


def test_no_filesystem_path_in_error_bodies(secure_serve: ServeProcess) -> None:
    """A refused model (hot reload) and /readyz give short reasons; the paths stay in the log."""
    sp = secure_serve
    models = Path(sp.env["SENSORCAST_MODELS__DIR"])
    bad = models / "kit" / "2"
    shutil.copytree(models / "kit" / "1", bad)
    manifest = orjson.loads((bad / "manifest.json").read_bytes())
    manifest["version"] = "2"
    (bad / "manifest.json").write_bytes(orjson.dumps(manifest))
    (bad / "model.onnx").write_bytes(b"\x00not onnx")  # fails the hash
    try:
        reload = call(sp, "POST", "/v1/models/reload", WRITE_KEY)
        refused = call(sp, "GET", "/v1/models/refused", READ_KEY)
        ready = call(sp, "GET", "/readyz")
    finally:
        shutil.rmtree(bad)
        call(sp, "POST", "/v1/models/reload", WRITE_KEY)
    assert reload.status_code == 200 and "kit/2" in reload.json()["refused"]
    assert refused.json()["kit/2"].startswith("models/kit/2/model.onnx: SHA-256")
    root = str(models.parent)
    for body in (reload.text, refused.text, ready.text, *BODIES):
        assert root not in body and "/tmp/" not in body, body[:300]
    assert str(bad) in sp.tail(10**7)  # the operator still sees where


def test_compose_stack_binds_every_address_with_keys(tmp_path: Path) -> None:
    """docker-compose.yml binds 0.0.0.0; deploy/init.sh makes the keys it mounts, so the open
    write routes check passes; without them the same settings are refused."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    env = compose["services"]["sensorcast"]["environment"]
    assert env["SENSORCAST_API__HOST"] == "0.0.0.0"
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name in ("init.sh", "env.example"):
        shutil.copy(REPO / "deploy" / name, deploy / name)
    subprocess.run(["sh", str(deploy / "init.sh")], capture_output=True, check=True, timeout=30)

    def local(path: str) -> Path:
        return deploy / "secrets" / Path(path).name  # /run/secrets/<name> in the container

    api = ApiSettings(host=env["SENSORCAST_API__HOST"], api_key_file=local(env["SENSORCAST_API__API_KEY_FILE"]),
                      read_key_file=local(env["SENSORCAST_API__READ_KEY_FILE"]))  # type: ignore[call-arg]
    check_exposure(api, ApiKeys.from_settings(api))
    bare = ApiSettings(host="0.0.0.0")  # type: ignore[call-arg]  # the image alone, no keys
    with pytest.raises(ConfigError, match="ALLOW_OPEN"):
        check_exposure(bare, ApiKeys.from_settings(bare))
