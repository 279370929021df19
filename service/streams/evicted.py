"""The saved state of evicted streams, kept until it is too old to continue from.

An idle stream's row in its lane (``Lane.export_rows``: recurrent state, forecasts, scorer
and decider state, resampler position) is packed into one byte row and kept here, keyed
by stream id, so a stream that returns continues where it left off instead of warming
up again. In memory, not on disk: a saved state is only useful while the stream's gap
would still be bridged (``streams.max_gap_steps`` buckets after its last step; a longer
gap resets the stream anyway), so it is short-lived, and a row is about 1 KB. A restart
loses them: those streams warm from the store, like any new stream.

Bounded twice: an entry expires when its stream could no longer be continued (``expire``),
and at most ``cap`` entries are kept (the oldest evictions go first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.arrays import I64

Arrays = dict[str, npt.NDArray[np.generic]]


class RowCodec:
    """Packs the row arrays of one lane (B rows) into a (B, W) byte matrix and back."""

    def __init__(self, arrays: Arrays) -> None:
        self.fields: list[tuple[str, np.dtype[np.generic], tuple[int, ...], int, int]] = []
        width = 0
        for k, a in arrays.items():
            n = int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize
            self.fields.append((k, a.dtype, a.shape[1:], width, n))
            width += n
        self.width = width

    def pack(self, arrays: Arrays) -> npt.NDArray[np.uint8]:
        b = len(next(iter(arrays.values())))
        out = np.empty((b, self.width), np.uint8)
        for k, _, _, off, n in self.fields:
            out[:, off : off + n] = np.ascontiguousarray(arrays[k]).reshape(b, -1).view(np.uint8)
        return out

    def unpack(self, row: npt.NDArray[np.uint8]) -> Arrays:
        """One packed row -> arrays with a leading dimension of 1 (what ``import_rows`` takes)."""
        return {k: row[off : off + n].view(dtype).reshape(1, *shape).copy() for k, dtype, shape, off, n in self.fields}


@dataclass(frozen=True, slots=True)
class _Saved:
    model: str  # "name@version"
    sha256: str
    codec: RowCodec
    row: npt.NDArray[np.uint8]
    useful_until_ns: int


class EvictedStates:
    def __init__(self, cap: int) -> None:
        self.cap = max(cap, 0)
        self._saved: OrderedDict[str, _Saved] = OrderedDict()  # oldest eviction first

    def __len__(self) -> int:
        return len(self._saved)

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._saved

    def put(self, ids: list[str], model: str, sha256: str, arrays: Arrays, useful_until_ns: I64) -> None:
        """Save rows ``arrays`` (aligned with ``ids``) of one lane."""
        if not ids or self.cap == 0:
            return
        codec = RowCodec(arrays)
        packed = codec.pack(arrays)  # (B, W) bytes
        for i, sid in enumerate(ids):
            self._saved.pop(sid, None)
            # A copy per row: a row must not keep its whole batch alive after the others left.
            self._saved[sid] = _Saved(model, sha256, codec, packed[i].copy(), int(useful_until_ns[i]))
        while len(self._saved) > self.cap:
            self._saved.popitem(last=False)

    def pop(self, stream_id: str, model: str, sha256: str) -> Arrays | None:
        """The saved rows of ``stream_id`` (leading dimension 1) if saved for this very model;
        the entry is removed either way. (One that returns too late is reset by the gap
        rule like any restored stream: it warms from the store.)"""
        saved = self._saved.pop(stream_id, None)
        if saved is None or saved.model != model or saved.sha256 != sha256:
            return None
        return saved.codec.unpack(saved.row)

    def discard(self, stream_id: str) -> bool:
        """Forget ``stream_id``'s saved state (the stream was deleted); False when none."""
        return self._saved.pop(stream_id, None) is not None

    def expire(self, now_ns: int) -> int:
        """Forget states that are too old to continue from; returns how many."""
        old = [sid for sid, s in self._saved.items() if s.useful_until_ns < now_ns]
        for sid in old:
            del self._saved[sid]
        return len(old)
