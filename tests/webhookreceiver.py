"""A real HTTP server on 127.0.0.1 (stdlib ``http.server`` in a thread) that records webhook requests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    """Answers each POST with ``respond(request)`` (status, extra headers); records every request.

    ``port=0`` picks a free one; a given port lets a test bring a receiver back where a sender
    was pointed while nothing listened.
    """

    def __init__(self, port: int = 0, respond: Callable[[Request], tuple[int, dict[str, str]]] | None = None,
                 gate: threading.Event | None = None) -> None:
        self.requests: list[Request] = []  # answered
        self.arrived: list[Request] = []  # read, perhaps still held by the gate
        self.respond = respond or (lambda _req: (204, {}))
        self.gate = gate  # when given, each request waits for it (a slow receiver)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                req = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                owner.arrived.append(req)
                if owner.gate is not None:
                    owner.gate.wait(30)
                owner.requests.append(req)
                status, headers = owner.respond(req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
