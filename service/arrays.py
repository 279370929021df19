"""Array type aliases, and per-row arrays each declared once (``Col`` in a ``RowArrays``).

Every stage that keeps state per stream (the model table, the anomaly stage and its
decider, the resample positions, the stream slots) holds it in batch-major arrays with
one row per stream, gathered and scattered by row index (docs/engine.md: a table of rows
beats a dict of per-stream arrays). A stage declares its arrays as ``Col`` class
attributes; growing, resetting, clearing a freed row, and exporting/importing rows
(checkpoints, eviction) are then generic, so a new array cannot be forgotten in one of them.

``Col`` is a non-data descriptor: ``RowArrays.__init__`` puts each array in the instance
``__dict__``, which wins over the class attribute, so the hot path reads a plain attribute
(no descriptor call); the class attribute declares the array and gives mypy its type.

>>> class Demo(RowArrays):
...     level = Col(np.float32, ("n",), np.nan)
...     count = Col(np.int64, fill=0, reset=False)
>>> d = Demo({"n": 2}, capacity=3)
>>> d.level.shape, d.count.dtype.name
((3, 2), 'int64')
>>> sorted(d.export(np.array([0, 2])))
['count', 'level']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar, overload

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
IntArr = npt.NDArray[np.intp]
I64 = npt.NDArray[np.int64]

G = TypeVar("G", bound=np.generic)
Arrays = dict[str, npt.NDArray[np.generic]]


class Col(Generic[G]):
    """One per-row array: ``dtype``, trailing ``shape`` (ints, or names of the owner's
    dims), the ``fill`` of a fresh row.

    ``reset``: a stream that starts over (long gap, poisoned state) gets the fill again;
    False keeps the value (what was last reported stays readable). ``saved``: exported for
    checkpoints and eviction. ``optional``: a saved row without it imports as the fill
    (checkpoints written before the array existed).
    """

    __slots__ = ("dtype", "fill", "name", "optional", "reset", "saved", "shape")

    def __init__(
        self,
        dtype: type[G],
        shape: tuple[str | int, ...] = (),
        fill: float = 0,
        *,
        reset: bool = True,
        saved: bool = True,
        optional: bool = False,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.fill = fill
        self.reset = reset
        self.saved = saved
        self.optional = optional
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Col[G]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> npt.NDArray[G]: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> Col[G] | npt.NDArray[G]:
        if obj is None:
            return self
        raise AttributeError(f"{type(obj).__name__}.{self.name} read before RowArrays.__init__ made it")


class RowArrays:
    """Owner of the ``Col`` arrays declared on its class (and its bases)."""

    prefix: ClassVar[str] = ""  # export key prefix, e.g. "decider."
    _columns: ClassVar[tuple[Col[Any], ...]]

    def __init__(self, dims: Mapping[str, int] | None = None, capacity: int = 0) -> None:
        dims = dims or {}
        self.capacity = 0
        for c in self.columns():
            trailing = tuple(d if isinstance(d, int) else dims[d] for d in c.shape)
            self.__dict__[c.name] = np.full((0, *trailing), c.fill, c.dtype)
        self.grow(capacity)

    @classmethod
    def columns(cls) -> tuple[Col[Any], ...]:
        found = cls.__dict__.get("_columns")
        if found is None:
            named: dict[str, Col[Any]] = {}
            for klass in reversed(cls.__mro__):
                named.update({k: v for k, v in vars(klass).items() if isinstance(v, Col)})
            found = cls._columns = tuple(named.values())
        return found

    def array(self, name: str) -> npt.NDArray[np.generic]:
        out: npt.NDArray[np.generic] = self.__dict__[name]
        return out

    def grow(self, capacity: int) -> None:
        """Room for ``capacity`` rows; new rows hold their fills."""
        extra = capacity - self.capacity
        if extra <= 0:
            return
        d = self.__dict__
        for c in self.columns():
            a = d[c.name]
            d[c.name] = np.concatenate([a, np.full((extra, *a.shape[1:]), c.fill, a.dtype)])
        self.capacity = capacity

    def reset(self, rows: IntArr) -> None:
        """The columns declared ``reset`` back to their fill: these streams start over."""
        d = self.__dict__
        for c in self.columns():
            if c.reset:
                d[c.name][rows] = c.fill

    def clear(self, rows: IntArr) -> None:
        """Every column back to its fill: the rows are as new (a freed row is reused clean)."""
        d = self.__dict__
        for c in self.columns():
            d[c.name][rows] = c.fill

    def export(self, rows: IntArr, prefix: str | None = None) -> Arrays:
        """Copies of the saved columns at ``rows``, keyed ``prefix + name`` (the class's
        ``prefix`` unless given)."""
        d = self.__dict__
        p = self.prefix if prefix is None else prefix
        return {p + c.name: d[c.name][rows] for c in self.columns() if c.saved}

    def load(self, rows: IntArr, arrays: Mapping[str, npt.NDArray[np.generic]], prefix: str | None = None) -> None:
        """Rows saved by ``export`` (of a table with the same dims) into ``rows``.

        Every shape is checked before anything is written: KeyError for a missing
        required array, ValueError for a shape that does not fit.
        """
        d = self.__dict__
        p = self.prefix if prefix is None else prefix
        picked: list[tuple[Col[Any], npt.NDArray[np.generic] | None]] = []
        for c in self.columns():
            if not c.saved:
                continue
            key = p + c.name
            if key not in arrays and c.optional:
                picked.append((c, None))
                continue
            saved = arrays[key]
            if saved.shape[1:] != d[c.name].shape[1:]:
                raise ValueError(f"saved array {key} has shape {saved.shape[1:]}, table has {d[c.name].shape[1:]}")
            picked.append((c, saved))
        for c, src in picked:
            d[c.name][rows] = c.fill if src is None else src
