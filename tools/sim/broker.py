"""An MQTT broker inside this process (amqtt), for ``sensorcast demo`` on a bare machine.

amqtt is pure Python (the ``demo`` extra), needs no root and no server install, and
delivered ~1k QoS 1 messages/s on the measuring machine: enough for a demo of a few
dozen streams, not for production (use mosquitto, as the compose stack does). It runs
on its own asyncio loop in a daemon thread, so the rest of the service stays
synchronous and talks to it over loopback like to any other broker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

from service.errors import SensorcastError

log = logging.getLogger(__name__)


class BrokerError(SensorcastError):
    """The embedded broker could not start (port taken, amqtt missing)."""


class EmbeddedBroker:
    """``start()`` returns once the broker accepts connections on ``host:port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as e:  # pragma: no cover - depends on the install
            raise BrokerError("the embedded broker needs amqtt: pip install 'sensorcast[demo]'") from e
        # Fail fast and clearly when the port is taken, instead of amqtt's traceback.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
            except OSError as e:
                raise BrokerError(f"cannot listen on {self.host}:{self.port}: {e.strerror}") from e
        # amqtt logs a warning per stray PUBACK and an error per probe connection: noise
        # for a demo that prints its own lines.
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 64}},
            # No $SYS chatter and no per-packet logging: the demo prints its own lines.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            # amqtt lets errors of clients that hang up mid-handshake reach the loop's
            # default handler, which prints tracebacks; keep them out of the demo's output.
            loop.set_exception_handler(lambda lp, ctx: log.debug("embedded broker: %s", ctx.get("message")))
            try:
                self._broker = Broker(config, loop=loop)
                loop.run_until_complete(self._broker.start())
            except BaseException as e:
                self._error = e
                self._ready.set()
                loop.close()
                return
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="embedded-mqtt", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise BrokerError(f"embedded broker did not start within {timeout_s}s")
        if self._error is not None:
            raise BrokerError(f"embedded broker failed to start: {self._error}") from self._error
        log.info("embedded MQTT broker (amqtt) listening on %s", self.url)

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or self._thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
            try:
                fut.result(timeout_s)
            except Exception:
                log.warning("embedded broker did not shut down cleanly", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout_s)
        self._loop = self._broker = self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
