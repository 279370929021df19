"""What the NATS link may print about its servers."""

from __future__ import annotations

from service.nats.link import redacted


def test_credentials_never_reach_logs() -> None:
    url = "nats://svc:s3cret@nats1:4222,nats://nats2:4222,tls://u:p%40ss@nats3:4222"
    out = redacted(url)
    assert "s3cret" not in out and "p%40ss" not in out and "svc" not in out
    assert out == "nats://nats1:4222,nats://nats2:4222,tls://nats3:4222"
