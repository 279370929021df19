"""Test-only: end the ingester's MQTT network thread of a real ``sensorcast serve`` process.

Nothing in ``service/`` can do this (no setting, no signal): a test writes a
``sitecustomize.py`` that imports this module into the child process (``PYTHONPATH``),
and names a trigger file in ``SC_TEST_KILL_INTAKE_FILE``. Once that file exists, the next
pass of paho's loop in the manually acknowledging (ingest) client raises
``ThreadKilled``, a ``BaseException`` no guard in the service catches: the thread ends
as it would on a bug outside every guard. The alert publisher's client (automatic acks)
is left alone.
"""

from __future__ import annotations

import os
from typing import Any

import paho.mqtt.client as paho

TRIGGER_ENV = "SC_TEST_KILL_INTAKE_FILE"


class ThreadKilled(BaseException):
    """Stands for whatever ends a thread outside its ``except Exception`` guards."""


def install() -> None:
    trigger = os.environ.get(TRIGGER_ENV)
    if not trigger:
        return
    original = paho.Client.loop_misc

    def loop_misc(self: paho.Client) -> Any:
        if self._manual_ack and os.path.exists(trigger):
            raise ThreadKilled("test fault: the ingester's MQTT network thread is ended")
        return original(self)

    paho.Client.loop_misc = loop_misc  # type: ignore[method-assign]


install()
