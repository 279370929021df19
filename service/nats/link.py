"""One NATS connection for a process's threaded code: nats-py is asyncio, the pipeline is threads.

``NatsLink`` runs an event loop in a daemon thread and owns the client there. Threads call
``run(coro)`` and wait for the result; code already on the loop (message callbacks) uses
``spawn`` instead, since waiting on the loop from the loop would deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from service.config import NatsSettings
from service.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


def redacted(url: str) -> str:
    """``nats://user:secret@host:4222,...`` without the credentials, for logs and errors."""
    return ",".join(u.rsplit("@", 1)[0].split("//", 1)[0] + "//" + u.rsplit("@", 1)[1] if "@" in u else u
                    for u in url.split(","))


def why(e: BaseException) -> str:
    """An exception for a log line: nats-py's timeouts have an empty message."""
    return str(e) or type(e).__name__


def replica_name(settings: NatsSettings) -> str:
    return settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"


class NatsLink:
    def __init__(self, settings: NatsSettings, name: str = "sensorcast") -> None:
        if not settings.servers:
            raise ConfigError("nats.url: no servers given")
        self.settings = settings
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"nats-{name}", daemon=True)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        """Connect (retrying until ``timeout_s``); afterwards nats-py reconnects by itself, forever."""
        self._thread.start()
        self.run(self._connect(timeout_s), timeout_s + 5)

    async def _connect(self, timeout_s: float) -> None:
        async def disconnected() -> None:
            if not self._closing:
                log.warning("NATS %s: disconnected; reconnecting", self.name)

        async def reconnected() -> None:
            url = self.nc.connected_url
            log.info("NATS %s: reconnected to %s", self.name, f"{url.hostname}:{url.port}" if url else "?")

        async def error(e: Exception) -> None:
            log.warning("NATS %s: %s", self.name, e)

        creds = str(self.settings.creds_file) if self.settings.creds_file else None
        self._nc = await self._first_connect(disconnected, reconnected, error, creds, timeout_s)
        self._js = self._nc.jetstream(timeout=5)

    async def _first_connect(self, disconnected: Any, reconnected: Any, error: Any, creds: str | None,
                             timeout_s: float) -> Client:
        # nats-py gives up on a first connect that fails; a server still starting is retried here.
        deadline = self.loop.time() + timeout_s
        while True:
            try:
                return await nats.connect(
                    servers=self.settings.servers, name=self.name, user_credentials=creds,
                    # After that, reconnect forever; with several servers the next try goes to another.
                    connect_timeout=2, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
                )
            except Exception as e:  # nats-py raises its own and OSError subclasses
                if self.loop.time() >= deadline:
                    raise ConnectionError(f"NATS {redacted(self.settings.url or '')}: cannot connect: {e}") from e
                await asyncio.sleep(0.5)

    def close(self, timeout_s: float = 5.0) -> None:
        if not self._thread.is_alive():
            if self._thread.ident is None and not self.loop.is_closed():
                self.loop.close()  # never started: the loop made in __init__ never ran
            return
        self._closing = True
        if self._nc is not None:
            try:
                self.run(self._nc.drain(), timeout_s)
            except Exception as e:  # closing anyway
                log.debug("NATS %s: drain: %s", self.name, e)
                with contextlib.suppress(Exception):
                    self.run(self._nc.close(), timeout_s)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:  # stopped by close(): end what nats-py left running, then the loop itself
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    # --- use ---------------------------------------------------------------------------
    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = 30.0) -> T:
        """Run ``coro`` on the link's loop and wait for its result (from any other thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("NatsLink.run called on the link's own loop; use spawn")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout_s)
        except TimeoutError:
            fut.cancel()
            raise

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Schedule ``coro`` on the loop without waiting; its error is logged."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        fut.add_done_callback(self._log_failure)
        return fut

    def _log_failure(self, fut: Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("NATS %s: background task failed: %s", self.name, fut.exception())

    @property
    def nc(self) -> Client:
        assert self._nc is not None, "NatsLink.start() first"
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "NatsLink.start() first"
        return self._js

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def alive(self) -> bool:
        return self._thread.is_alive()
