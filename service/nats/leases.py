"""Partition ownership: leases in a JetStream key-value bucket, renewed by a heartbeat.

The bucket (``<stream>_leases``, TTL = ``nats.lease_ttl_s``) holds ``m.<replica>`` for every
live replica and ``p<n>`` = the owner's id for every owned partition. A key not renewed within
the TTL expires on the server, so a dead replica's partitions become free by themselves.

- acquire: ``kv.create`` (refused if the key is held); the revision it returns is the *epoch*,
  the fencing token the checkpoint store checks (revisions only grow, so a newer owner always
  has the larger epoch);
- renew: ``kv.update(last=revision)``: refused if anybody else wrote the key;
- release: ``kv.delete(last=revision)``: the partition is free at once, not after the TTL.

Shares: P partitions over M live members, P = q*M + r: the first r members (sorted ids) aim at
q+1 partitions, the others at q (so everybody gets ceil(P/M) or one less). A replica above its
target releases only as many as the members it has seen in two consecutive heartbeats lack
beyond the free partitions, so a newcomer gets some within a few heartbeats and nothing moves
back and forth. Which partitions a replica takes or gives up is ranked by rendezvous hashing of
(partition, replica), so ownership stays put across restarts and membership changes.

A replica cut off from the servers cannot learn that its keys expired: ``check`` (also run at the
start and end of every heartbeat) reports a lease lost once its last successful renewal is older
than the TTL less a margin, on the local monotonic clock, before the server hands it to another.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from nats.js.errors import BadRequestError, KeyNotFoundError
from nats.js.kv import KeyValue

from service.nats.link import why
from service.nats.provision import retrying

log = logging.getLogger(__name__)
T = TypeVar("T")

MEMBER = "m."
PARTITION = "p"
ORPHAN_BEATS = 6  # heartbeats a partition may stay free before anybody takes it, over its target
_KEY_UNSAFE = re.compile(r"[^-_=a-zA-Z0-9]")


@dataclass(frozen=True, slots=True)
class Lease:
    partition: int
    revision: int  # of the last renewal: the next one must match it
    epoch: int  # the revision at acquisition: the fencing token of this ownership


@dataclass(frozen=True, slots=True)
class Changes:
    gained: dict[int, Lease] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)


def member_key(replica: str) -> str:
    """``m.<replica>``, with characters a KV key cannot hold replaced (a hostname may have any)."""
    return MEMBER + _KEY_UNSAFE.sub("_", replica)


def rank(partition: int, replica: str) -> int:
    """Rendezvous score: the replica with the highest score for a partition prefers it most."""
    return int.from_bytes(hashlib.blake2b(f"{partition}/{replica}".encode(), digest_size=8).digest(), "big")


def targets(partitions: int, members: set[str]) -> dict[str, int]:
    """How many partitions each member aims at: ceil(P/M) for the first P mod M, floor for the rest."""
    q, r = divmod(partitions, len(members))
    return {m: q + (1 if i < r else 0) for i, m in enumerate(sorted(members))}


class Leases:
    """One replica's view and holding of the partition leases. Not thread-safe: call ``heartbeat``,
    ``release_all`` and ``check`` from one task (they run on the NATS link's loop)."""

    def __init__(self, kv: KeyValue, replica: str, partitions: int, ttl_s: float) -> None:
        if partitions < 1 or ttl_s <= 0:
            raise ValueError(f"leases: partitions {partitions} and ttl_s {ttl_s} must be positive")
        self.kv = kv
        self.replica = replica
        self.me = member_key(replica)[len(MEMBER):]  # the id as it appears in the keys and values
        self.partitions = partitions
        self.ttl_s = ttl_s
        # Stop before the server's expiry: the renewal was sent before the server stamped it.
        self.safe_s = ttl_s - min(ttl_s / 6, 1.0)
        self.held: dict[int, Lease] = {}
        self._renewed: dict[int, float] = {}  # partition -> monotonic time the last good renewal was sent
        self._seen_before: set[str] = set()  # members in the previous heartbeat's snapshot
        self._free_beats: dict[int, int] = {}  # partition -> heartbeats in a row it was seen free
        self._beats = 0
        self._deadline = 0.0

    # --- the heartbeat ---------------------------------------------------------------------
    async def heartbeat(self) -> Changes:
        """Renew, look at the bucket, acquire up to the target and release surplus. Refusals
        and server errors are logged, not raised: the heartbeat reports what it holds."""
        gained: dict[int, Lease] = {}
        lost = self.check()
        self._beats += 1
        # Every call of this beat ends by then, however the servers answer: the caller waits for
        # the beat with the TTL as its limit, and the next renewal must not be held up.
        self._deadline = time.monotonic() + self.ttl_s * 0.7
        budget = self.ttl_s / 3
        joined, refused = await asyncio.gather(self._join(budget), self._renew(budget))
        lost += refused
        try:
            if not joined:  # the servers did not answer: end the beat now, the next one retries
                raise TimeoutError("membership not renewed")
            members, owners = await self._snapshot(budget)
        except Exception as e:
            log.warning("leases %s: cannot read the bucket: %s", self.replica, why(e))
        else:
            # The first beat only announces this replica: replicas started together then see
            # each other before taking partitions, instead of one taking all and handing back.
            if self._beats > 1:
                # Not what was lost in this beat: a partition is never lost and gained in one report.
                gained = await self._acquire(members, {p: o for p, o in owners.items() if p not in lost}
                                             | {p: ("", 0) for p in lost}, budget)
                lost += await self._release(members, owners, budget)
            self._seen_before = members
        lost += self.check()
        return Changes({p: lease for p, lease in gained.items() if p in self.held}, sorted(set(lost)))

    def deadline(self, partition: int, epoch: int | None = None) -> float:
        """Monotonic time up to which ``partition`` (under ``epoch``) may be trusted as held: its
        last good renewal plus the TTL less a margin; 0.0 if not held. Workers check it between
        heartbeats, to stop in time even when a heartbeat is slow. Reads only; safe from another thread."""
        lease = self.held.get(partition)
        renewed = self._renewed.get(partition)
        if lease is None or renewed is None or (epoch is not None and lease.epoch != epoch):
            return 0.0
        return renewed + self.safe_s

    def valid(self, partition: int, epoch: int | None = None) -> bool:
        """Whether ``partition`` is held (under ``epoch``) and its ``deadline`` has not passed."""
        return time.monotonic() <= self.deadline(partition, epoch)

    def check(self) -> list[int]:
        """Drop and return the leases whose last renewal is too old to be trusted (no network)."""
        now = time.monotonic()
        late = [p for p in self.held if now - self._renewed.get(p, 0.0) > self.safe_s]
        for p in late:
            log.warning("leases %s: p%d not renewed for %.1f s: lost", self.replica, p, now - self._renewed[p])
            self._drop(p)
        return late

    async def release_all(self) -> None:
        """Clean shutdown: free every held partition and leave the membership now, not after the TTL."""
        self._deadline = time.monotonic() + self.ttl_s
        held = list(self.held.values())
        for lease in held:
            self._drop(lease.partition)

        async def release(lease: Lease) -> None:
            try:
                await self._call(f"release p{lease.partition}", lambda: self.kv.delete(
                    _key(lease.partition), last=lease.revision), self.ttl_s / 2)
            except Exception as e:  # somebody else's already, or the server is away: it expires
                log.info("leases %s: release p%d: %s", self.replica, lease.partition, why(e))

        async def leave() -> None:
            try:
                # Purged, not deleted: a delete marker would still count as a member until the TTL.
                await self._call("leave", lambda: self.kv._js.purge_stream(
                    self.kv._stream, subject=self.kv._pre + MEMBER + self.me), self.ttl_s / 2)
            except Exception as e:
                log.info("leases %s: leaving: %s", self.replica, why(e))

        await asyncio.gather(leave(), *(release(lease) for lease in held))

    # --- steps -----------------------------------------------------------------------------
    async def _join(self, budget: float) -> bool:
        try:
            await self._call("membership", lambda: self.kv.put(MEMBER + self.me, self.me.encode()), budget)
        except Exception as e:  # the next beat retries
            log.warning("leases %s: membership renewal failed: %s", self.replica, why(e))
            return False
        return True

    async def _renew(self, budget: float) -> list[int]:
        async def one(lease: Lease) -> int | None:
            sent = time.monotonic()
            try:
                rev = await self._call(f"renew p{lease.partition}", lambda: self.kv.update(
                    _key(lease.partition), self.me.encode(), last=lease.revision), budget)
            except BadRequestError as e:
                # Somebody else wrote the key (it expired and was taken): ours no more. (A renewal
                # whose answer got lost looks the same; the snapshot adopts it back, new epoch.)
                log.warning("leases %s: p%d renewal refused: %s", self.replica, lease.partition, e)
                return lease.partition
            except Exception as e:  # no answer: keep it until check() says it is too old
                log.warning("leases %s: p%d renewal failed: %s", self.replica, lease.partition, why(e))
                return None
            if lease.partition in self.held:
                self.held[lease.partition] = Lease(lease.partition, rev, lease.epoch)
                self._renewed[lease.partition] = sent
            return None

        results = await asyncio.gather(*(one(lease) for lease in list(self.held.values())))
        lost = [p for p in results if p is not None]
        for p in lost:
            self._drop(p)
        return lost

    async def _snapshot(self, budget: float) -> tuple[set[str], dict[int, tuple[str, int]]]:
        """Live members and partition -> (owner, revision). The bucket's subjects come from the
        stream's info and the leases from plain gets: no consumer, since after a node loss a 2.9
        cluster fails to create about half the consumers for half a minute (measured), while
        the stream leader answers these at once."""
        js, stream, pre = self.kv._js, self.kv._stream, self.kv._pre  # nats-py has no public accessors

        async def read() -> tuple[set[str], dict[int, tuple[str, int]]]:
            info = await js.stream_info(stream, subjects_filter=f"{pre}>")
            keys = [subject[len(pre):] for subject in (info.state.subjects or {})]
            members = {k[len(MEMBER):] for k in keys if k.startswith(MEMBER)}
            leases = [int(k[1:]) for k in keys if k.startswith(PARTITION) and k[1:].isdigit()]

            async def owner(p: int) -> tuple[int, tuple[str, int] | None]:
                try:
                    entry = await self.kv.get(_key(p))
                except KeyNotFoundError:  # released (a delete marker), or expired since the info
                    return p, None
                return p, ((entry.value or b"").decode(errors="replace"), entry.revision or 0)

            found = await asyncio.gather(*(owner(p) for p in leases if p < self.partitions))
            return members, {p: o for p, o in found if o is not None}

        members, owners = await self._call("read the bucket", read, budget)
        members.add(self.me)  # renewed a moment ago, even if this read missed it
        return members, owners

    async def _acquire(self, members: set[str], owners: dict[int, tuple[str, int]], budget: float) -> dict[int, Lease]:
        gained: dict[int, Lease] = {}
        goal = targets(self.partitions, members)
        target = goal[self.me]
        free = {p for p in range(self.partitions) if p not in owners}
        self._free_beats = {p: self._free_beats.get(p, 0) + 1 for p in free}
        # A partition nobody aims at (every member is at its target, e.g. a dead one still counts
        # as a member) is taken over the target after two heartbeats; after ORPHAN_BEATS by anyone
        # in any case, so a partition never stays unowned while a replica lives.
        holding = _holding(owners)
        lacking = any(holding.get(m, 0) < goal[m] for m in members - {self.me})
        orphans = {p for p, n in self._free_beats.items() if n >= ORPHAN_BEATS or (n >= 2 and not lacking)}
        # Ours on the server but not here: a renewal or acquisition whose answer was lost. Take
        # it back with a compare-and-set on what the bucket holds: a new epoch.
        mine = sorted(p for p, (owner, _rev) in owners.items() if owner == self.me and p not in self.held)
        for p in mine:
            sent = time.monotonic()
            rev = await self._try(f"adopt p{p}", lambda p=p: self.kv.update(  # type: ignore[misc]
                _key(p), self.me.encode(), last=owners[p][1]), budget)
            if rev is not None:
                gained[p] = self._hold(p, rev, sent)
        wanted = sorted(free, key=lambda p: rank(p, self.me), reverse=True)
        for p in wanted:
            if len(self.held) >= target and p not in orphans:
                continue
            if time.monotonic() > self._deadline - 0.1:
                break
            sent = time.monotonic()
            rev = await self._try(f"acquire p{p}", lambda p=p: self.kv.create(  # type: ignore[misc]
                _key(p), self.me.encode()), budget)
            if rev is not None:
                gained[p] = self._hold(p, rev, sent)
        if gained:
            log.info("leases %s: acquired %s (target %d of %d over %d members)", self.replica,
                     sorted(gained), target, self.partitions, len(members))
        return gained

    async def _release(self, members: set[str], owners: dict[int, tuple[str, int]], budget: float) -> list[int]:
        goal = targets(self.partitions, members)
        surplus = len(self.held) - goal[self.me]
        if surplus <= 0:
            return []
        holding = _holding(owners)
        # Only members seen twice count: one glimpse of a replica that is starting or dying
        # moves nothing. What they lack beyond the free partitions is what must be handed over.
        steady = (members & self._seen_before) - {self.me}
        lacking = sum(max(0, goal[m] - holding.get(m, 0)) for m in steady)
        free = sum(1 for p in range(self.partitions) if p not in owners)
        n = min(surplus, lacking - free)
        if n <= 0:
            return []
        # Give up the ones this replica is least preferred for.
        give = sorted(self.held, key=lambda p: rank(p, self.me))[:n]
        released: list[int] = []
        for p in give:
            lease = self.held[p]
            self._drop(p)
            released.append(p)
            # A refused delete means the key moved on already: it is not ours either way.
            await self._try(f"release p{p}", lambda lease=lease: self.kv.delete(  # type: ignore[misc]
                _key(lease.partition), last=lease.revision), budget)
        log.info("leases %s: released %s (target %d, %d lacking elsewhere)", self.replica, released,
                 goal[self.me], lacking)
        return released

    # --- helpers ---------------------------------------------------------------------------
    def _hold(self, p: int, rev: int, sent: float) -> Lease:
        lease = Lease(p, rev, rev)
        self.held[p] = lease
        self._renewed[p] = sent  # when the write left: the server's TTL runs from a later moment
        return lease

    def _drop(self, p: int) -> None:
        self.held.pop(p, None)
        self._renewed.pop(p, None)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], budget: float) -> T:
        # Retried through elections, but never past the budget nor the beat's deadline: a
        # heartbeat has to come back in time to report leases lost before the server gives them away.
        budget = min(budget, self._deadline - time.monotonic())
        if budget <= 0.05:
            raise TimeoutError(f"no time left in this heartbeat for {what}")
        return await asyncio.wait_for(retrying(f"{self.replica}: {what}", call, budget), budget + 0.2)

    async def _try(self, what: str, call: Callable[[], Awaitable[int]], budget: float) -> int | None:
        try:
            return await self._call(what, call, budget)
        except BadRequestError:
            return None  # held by another, or changed since the snapshot: not ours
        except Exception as e:
            log.warning("leases %s: %s failed: %s", self.replica, what, why(e))
            return None


def _holding(owners: dict[int, tuple[str, int]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for owner, _rev in owners.values():
        counts[owner] = counts.get(owner, 0) + 1
    return counts


def _key(partition: int) -> str:
    return f"{PARTITION}{partition}"
