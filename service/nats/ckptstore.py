"""Partition checkpoints in JetStream, fenced by the lease epoch.

The blob (the tar of an engine's checkpoint directory) goes to the object store
``<stream>_state``; the record in the KV bucket ``<stream>_ckpt``, key ``p<n>``, says which
object holds the latest state and up to which readings-stream sequence it is applied:
``{"seq", "epoch", "object", "replica", "saved_at"}``.

Fencing: a new owner ``claim``s the partition with its epoch (the lease revision at acquisition,
larger than every earlier owner's) by a compare-and-set on the record. Every ``save`` is a
compare-and-set on the revision this owner last wrote, so a stale owner that still believes it
holds the partition has its next save refused (``Fenced``) and its state never becomes the
partition's.

Objects are named ``p<n>.<epoch>.<a|b>``: an owner alternates between its two slots, writing the
one the record does not point to, so the object a new owner restores from is never overwritten
under it (a stale owner's only possible write goes to its other slot, and is then refused).
A new owner deletes the previous epoch's objects after its first save.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from service.nats.link import why
from service.nats.provision import retrying

log = logging.getLogger(__name__)
T = TypeVar("T")

_OBJECT = re.compile(r"p\d+\.\d+\.[ab]")
CLAIM_ATTEMPTS = 5  # re-reads when a save of the previous owner slips in between read and claim


@dataclass(frozen=True, slots=True)
class Checkpoint:
    partition: int
    seq: int  # the last readings-stream sequence applied to the state in blob
    epoch: int  # the epoch of the owner that saved it
    blob: bytes


class Fenced(Exception):
    """A newer owner claimed the partition: stop working on it at once and discard its state."""


@dataclass(frozen=True, slots=True)
class _Record:
    seq: int
    epoch: int
    object: str | None
    replica: str
    saved_at: float | None

    def encode(self) -> bytes:
        return json.dumps({"seq": self.seq, "epoch": self.epoch, "object": self.object,
                           "replica": self.replica, "saved_at": self.saved_at}).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> _Record:
        try:
            d: dict[str, Any] = json.loads(raw or b"")
            if d.get("object") and not _OBJECT.fullmatch(str(d["object"])):
                raise ValueError(f"object {d['object']!r} is not p<n>.<epoch>.<slot>")
            return cls(int(d["seq"]), int(d["epoch"]), d.get("object") or None, str(d.get("replica", "")),
                       d.get("saved_at"))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"checkpoint record {raw!r} is not valid: {e}") from e


@dataclass(frozen=True, slots=True)
class _Claim:
    epoch: int
    revision: int  # the record's revision this owner wrote last: the next save's compare-and-set
    record: _Record


class CheckpointStore:
    def __init__(self, kv: KeyValue, objects: ObjectStore, replica: str = "", timeout_s: float = 45.0) -> None:
        self.kv = kv
        self.objects = objects
        self.replica = replica
        self.timeout_s = timeout_s  # how long each call is retried (a leader election takes seconds)
        self._claims: dict[int, _Claim] = {}

    async def claim(self, partition: int, epoch: int) -> Checkpoint | None:
        """Take over ``partition`` under ``epoch``: any older owner's later save is refused.
        Returns the latest checkpoint, or None when there is none (replay from the stream start)."""
        key = _key(partition)
        for _ in range(CLAIM_ATTEMPTS):
            current = await self._read(partition)
            if current is not None and current[0].epoch > epoch:
                raise Fenced(f"p{partition}: claimed by epoch {current[0].epoch} already (ours {epoch})")
            old, rev = current or (_Record(0, 0, None, "", None), 0)
            record = _Record(old.seq, epoch, old.object, self.replica, old.saved_at)
            try:
                revision = await self._call(f"claim p{partition}", self._cas(key, record.encode(), rev))
            except BadRequestError:
                written = await self._read(partition)
                if written is None or written[0] != record:
                    continue  # the previous owner saved in between: read again
                revision = written[1]  # ours went through, its answer got lost
            self._claims[partition] = _Claim(epoch, revision, record)
            log.info("checkpoint p%d: claimed under epoch %d (state at seq %d)", partition, epoch, record.seq)
            return await self._load(partition, record)
        raise Fenced(f"p{partition}: the record kept changing while claiming under epoch {epoch}")

    async def save(self, partition: int, epoch: int, seq: int, blob: bytes) -> None:
        """Store ``blob`` (the state after readings-stream sequence ``seq``). Raises Fenced when
        another owner claimed the partition since this one's claim or last save."""
        mine = self._claims.get(partition)
        if mine is None or mine.epoch != epoch:
            raise Fenced(f"p{partition}: not claimed under epoch {epoch} by this store")
        name = _object(partition, epoch, "b" if mine.record.object == _object(partition, epoch, "a") else "a")
        await self._call(f"put {name}", lambda: self.objects.put(name, blob))
        record = _Record(seq, epoch, name, self.replica, time.time())
        try:
            revision = await self._call(f"save p{partition}", lambda: self.kv.update(
                _key(partition), record.encode(), last=mine.revision))
        except BadRequestError:
            written = await self._read(partition)
            if written is None or written[0] != record:
                self._claims.pop(partition, None)
                if written is None or written[0].object != name:
                    # Nobody points at it. (A save that went through unanswered and was then
                    # claimed over is the new owner's starting point: kept.)
                    await self._delete(name)
                newer = f"epoch {written[0].epoch}" if written else "nobody"
                raise Fenced(f"p{partition}: save under epoch {epoch} refused; the record is {newer}'s") from None
            revision = written[1]
        self._claims[partition] = _Claim(epoch, revision, record)
        previous = mine.record.object
        if previous is not None and not previous.startswith(f"p{partition}.{epoch}."):
            # The first save of this ownership: the previous owner's two slots are history.
            prefix = previous.rsplit(".", 1)[0]
            for slot in ("a", "b"):
                await self._delete(f"{prefix}.{slot}")

    def forget(self, partition: int) -> None:
        """The partition is gone from this replica: its next save needs a new claim."""
        self._claims.pop(partition, None)

    # --- helpers ---------------------------------------------------------------------------
    def _cas(self, key: str, value: bytes, rev: int) -> Callable[[], Awaitable[int]]:
        # Revision 0: the key must not exist (create also takes over a deleted key's marker).
        return lambda: self.kv.update(key, value, last=rev) if rev else self.kv.create(key, value)

    async def _read(self, partition: int) -> tuple[_Record, int] | None:
        try:
            entry = await self._call(f"read p{partition}", lambda: self.kv.get(_key(partition)))
        except KeyNotFoundError:
            return None
        try:
            return _Record.decode(entry.value), entry.revision or 0
        except ValueError as e:
            # Unreadable (written by hand?): no state to restore, and any epoch claims over it.
            log.error("checkpoint p%d: %s; treating it as no checkpoint", partition, e)
            return _Record(0, 0, None, "", None), entry.revision or 0

    async def _load(self, partition: int, record: _Record) -> Checkpoint | None:
        if record.object is None:
            return None
        name = record.object
        try:
            result = await self._call(f"get {name}", lambda: self.objects.get(name))
        except NotFoundError:
            # Its state is gone (deleted by hand?): replaying the retained stream from the start
            # rebuilds it, where starting after seq with no state would skip readings.
            log.error("checkpoint p%d: object %s of the record is missing; replaying from the start", partition, name)
            return None
        saved_by = int(name.split(".")[1])  # the epoch in the name: the record's is the claimer's now
        return Checkpoint(partition, record.seq, saved_by, bytes(result.data or b""))

    async def _delete(self, name: str) -> None:
        try:
            await self._call(f"delete {name}", lambda: self.objects.delete(name))
        except NotFoundError:
            pass
        except Exception as e:  # a leftover object costs space, not correctness
            log.warning("checkpoint: cannot delete %s: %s", name, why(e))

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        # Each attempt bounded too: an object read is a consumer, which may be created and then
        # deliver nothing while the cluster recovers from a node loss (retrying only waits between tries).
        attempt_s = max(10.0, self.timeout_s / 3)

        async def attempt() -> T:
            return await asyncio.wait_for(call(), attempt_s)
        return await retrying(f"checkpoint {what}", attempt, self.timeout_s)


def _key(partition: int) -> str:
    return f"p{partition}"


def _object(partition: int, epoch: int, slot: str) -> str:
    return f"p{partition}.{epoch}.{slot}"
