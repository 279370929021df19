"""``sensorcast config``: print every setting as a markdown table or a .env example.

Also the one-line description of a configuration error (``describe_config_error``: the
variable, the value given, what is expected) and the warning for ``SENSORCAST_*``
variables that are not settings (``unknown_variables``), which ``service/cli.py`` uses
for every command.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from service.config import Settings
from service.errors import ConfigError

PREFIX = "SENSORCAST_"
# SENSORCAST_* variables read by the tools, tests and images rather than by Settings.
OTHER_VARIABLES = frozenset({
    "SENSORCAST_VERSION", "SENSORCAST_ETT", "SENSORCAST_FAULT_OUTAGE_S", "SENSORCAST_DEMO_MODELS",
    "SENSORCAST_SCREENSHOT_DIR", "SENSORCAST_NAB_DATA", "SENSORCAST_BENCH_DATA", "SENSORCAST_STACK_KEEP",
    "SENSORCAST_FUZZ_EXAMPLES",
})
_SECRET_NAME = re.compile(r"password|token|secret|(^|_)key$", re.I)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^/@\s]*@")
# A webhook URL's path and query often are its token (Slack, Teams...): shown as host only.
_URL_PATH = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/?#\s\"']+)[/?#][^\s\"']*")
MAX_SHOWN = 80
PROBE_TIMEOUT_S = 3.0


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _rows(ann, f"{prefix}{name.upper()}__")
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        shown = json.dumps(default, default=str) if not isinstance(default, str) else default
        rows.append((f"{prefix}{name.upper()}", shown, field.description or ""))
    return rows


def settings_rows() -> list[tuple[str, str, str]]:
    return _rows(Settings, "SENSORCAST_")


def effective_rows(settings: BaseModel, prefix: str = PREFIX) -> list[tuple[str, str, bool]]:
    """(variable, value as shown, is the default) for every setting of a built Settings."""
    rows: list[tuple[str, str, bool]] = []
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        var = f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel) and not isinstance(value, list):
            rows += effective_rows(value, var + "__")
            continue
        default = field.get_default(call_default_factory=True, validated_data={})
        shown = _as_env(value)
        if isinstance(default, str) and isinstance(value, frozenset):
            is_default = value == frozenset(d.strip() for d in default.split(","))
        else:
            is_default = value == default
        rows.append((var, redact(var, shown), is_default))
    return rows


def _as_env(value: object) -> str:
    """A setting's value as it would be written in the environment."""
    if value is None:
        return ""
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, frozenset):  # roles
        return ",".join(sorted(value))
    return json.dumps(value, default=lambda o: o.model_dump() if isinstance(o, BaseModel) else str(o))


def check(probe: bool, timeout_s: float) -> int:
    """Print the effective settings; invalid ones raise (the CLI's one-line error, exit 2)."""
    settings = Settings()
    for var, shown, is_default in effective_rows(settings):
        print(f"{var}={shown}" + ("" if not is_default else "  # default"))
    print("settings: valid")
    if not probe:
        return 0
    failed = 0
    probes: list[tuple[str, str, Callable[[Settings, float], str]]] = [
        ("broker", redact("url", settings.mqtt.url), probe_broker),
        ("store", redact("url", settings.store.url), probe_store),
    ]
    for what, target, fn in probes:
        try:
            detail = fn(settings, timeout_s)
        except Exception as e:  # any failure is the probe's answer, not a crash of the check
            failed += 1
            print(f"probe {what} {target}: failed: {' '.join(str(e).split()) or type(e).__name__}")
        else:
            print(f"probe {what} {target}: ok ({detail})")
    return 1 if failed else 0


def probe_broker(settings: Settings, timeout_s: float) -> str:
    """TCP connect and MQTT CONNECT with the service's own client setup (URL, credentials, TLS)."""
    import threading

    from service.mqtt import make_client

    client, addr = make_client(settings.mqtt, f"{settings.mqtt.client_id}-check", protocol=settings.mqtt.protocol)
    answered = threading.Event()
    result: list[str] = []

    def on_connect(c: object, userdata: object, flags: object, reason: object, props: object = None) -> None:
        result.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    client.connect_timeout = timeout_s
    client.connect(addr.host, addr.port, keepalive=max(5, round(timeout_s) * 2))  # TCP (and TLS) here
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            raise TimeoutError(f"no CONNACK from {addr.host}:{addr.port} within {timeout_s:g} s")
        if result[0] != "Success":
            raise ConnectionRefusedError(f"the broker refused the connection: {result[0]}")
    finally:
        client.disconnect()
        client.loop_stop()
    return f"CONNACK from {addr.host}:{addr.port}"


def probe_store(settings: Settings, timeout_s: float) -> str:
    """Open the store as the service would (creates a SQLite file) and ping it."""
    from service.store import open_store

    store = open_store(settings.store.model_copy(update={"timeout_s": min(timeout_s, settings.store.timeout_s)}))
    try:
        if not store.ping():
            raise ConnectionError("the store did not answer the ping")
    finally:
        store.close()
    return "ping answered"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=["markdown", "env"], default="markdown",
        help="What to print: the settings as a markdown table (the README's) or a commented .env example.",
    )
    parser.add_argument(
        "--check", action="store_true",
        help="Show the effective settings (environment and .env, secrets redacted) and validate them: exit 2 "
        "with a one-line error when they are invalid.",
    )
    parser.add_argument(
        "--probe", action="store_true",
        help="With --check: also try the broker (MQTT CONNECT) and the store (ping); exit 1 if one fails.",
    )
    parser.add_argument(
        "--timeout", type=float, default=PROBE_TIMEOUT_S, help="Seconds each probe may take (default %(default)s)."
    )


def run(args: argparse.Namespace) -> int:
    if args.check or args.probe:
        return check(args.probe, args.timeout)
    rows = settings_rows()
    if args.format == "markdown":
        print("| variable | default | meaning |\n|---|---|---|")
        for var, default, desc in rows:
            print(f"| `{var}` | `{default}` | {desc} |")
    else:
        for var, default, desc in rows:
            print(f"# {desc}\n# {var}={'' if default == 'null' else default}")
    return 0


# -- errors and unknown names ------------------------------------------------------------
def redact(name: str, value: object) -> str:
    """The value as shown in messages: secrets as ***, a URL's password hidden, long values cut."""
    if _SECRET_NAME.search(name) and not name.upper().endswith("_FILE"):  # a file's path is no secret
        return "***"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = _URL_PASSWORD.sub(r"\1***@", text)
    if "WEBHOOKS__URLS" in name.upper():
        text = _URL_PATH.sub(r"\1/***", text)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _variable(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """(environment variable, where inside its value) for a validation error's location."""
    names: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):  # inside a list (models.bindings): the variable holds the whole list
            inner = ".".join(str(p) for p in loc[i:])
            return PREFIX + "__".join(names).upper(), f" (item {inner})"
        names.append(str(part))
    return PREFIX + "__".join(names).upper(), ""


def describe_config_error(exc: Exception, environ: Mapping[str, str] | None = None) -> str:
    """One line: the variable, the value given (redacted) and what is expected."""
    env = os.environ if environ is None else environ
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False):
            var, where = _variable(tuple(err["loc"]))
            given = env.get(var, err.get("input"))
            msg = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{var}={redact(var, given)}{where}: {msg}")
        return "; ".join(parts)
    if isinstance(exc, SettingsError):
        # pydantic-settings names only the group ("models"): find the variable that does not parse.
        m = re.search(r'field "(\w+)"', str(exc))
        group = PREFIX + (m.group(1).upper() if m else "")
        for var in sorted(k for k in env if k == group or k.startswith(group + "__")):
            try:
                json.loads(env[var])
            except ValueError as e:
                if env[var].lstrip()[:1] in "[{":
                    return f"{var}={redact(var, env[var])}: expected JSON, which does not parse ({e})"
        return f"{group}: {exc}"
    # A ConfigError names its setting as group.field (ingest.share_group): say the variable instead.
    return _SETTING_NAME.sub(_to_variable, " ".join(str(exc).split()), count=1)


_SETTING_NAME = re.compile(r"\b([a-z]+)\.([a-z_]+)\b")


def _to_variable(m: re.Match[str]) -> str:
    group = Settings.model_fields.get(m.group(1))
    model = group.annotation if group is not None else None
    if isinstance(model, type) and issubclass(model, BaseModel) and m.group(2) in model.model_fields:
        return f"{PREFIX}{m.group(1).upper()}__{m.group(2).upper()}"
    return m.group(0)


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per SENSORCAST_* variable that is no setting, with the closest valid name."""
    env = os.environ if environ is None else environ
    leaves = [var for var, _, _ in settings_rows()]
    valid = set(leaves) | {PREFIX + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    warnings = []
    for var in sorted(k for k in env if k.upper().startswith(PREFIX) and k not in valid):
        close = difflib.get_close_matches(var.upper(), leaves, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (see `sensorcast config`)"
        warnings.append(f"{var} is not a sensorcast setting and is ignored{hint}")
    return warnings


CONFIG_ERRORS = (ConfigError, ValidationError, SettingsError)
