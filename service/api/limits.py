"""Request body size limit as plain ASGI middleware: 413 before the body is parsed.

Checks ``Content-Length`` up front, and reads bodies without one (chunked) itself up to
the limit before the route sees them, so leaving the header out does not bypass it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reject(send, 400, b'{"detail":"Content-Length is not a number"}')
                    return
        if declared is not None:
            if declared > self.max_bytes:
                await _reject(send, 413, self._message())
                return
            await self.app(scope, receive, send)  # the server enforces the declared length
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        # No length declared: buffer up to the limit, then replay to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _reject(send, 413, self._message())
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _message(self) -> bytes:
        return b'{"detail":"request body is larger than the limit of %d bytes"}' % self.max_bytes


async def _reject(send: Send, status: int, body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
