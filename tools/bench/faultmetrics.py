"""Scoring of the fault benchmark: alerts (as steps) against labelled fault events.

Pure functions on plain records, so they are tested on hand-made alert lists
(tests/unit/test_bench_faults.py). Time is in grid steps of each stream.

- An event ``[start, end)`` is **detected** when any check of its stream fires at a step
  in ``[start, end + slack)``; its **delay** is that first firing step minus ``start``.
  The benchmark uses no slack: the simulator ends every fault with a jump back to normal,
  and an alert on that jump is not a detection of the fault (it is counted apart, as
  **after the end**: an undetected event with an alert in the ``AFTER_END`` steps after).
  It is **named** when some alert firing in that window carries the check or kind the
  fault should produce (``EXPECTED``).
- **Point-wise recall**: the share of the event's steps during which at least one check
  of the stream is firing (from its firing step up to its resolution).
- **False alerts**: firing alerts on clean streams after the warm-up, per 1,000
  stream-hours of those streams after the warm-up.
- **Predicted before crossing**: a degradation with a ``predicted_breach`` alert firing
  in ``[start, crossing)``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# What each simulated fault should be named by: the alert's check or its kind.
EXPECTED: dict[str, str] = {
    "spike": "spike", "level_shift": "level_shift", "stuck": "stuck", "variance_burst": "variance",
    "drift": "drift", "silent": "silent", "out_of_range": "out_of_range", "degradation": "predicted_breach",
}
AFTER_END = 10  # steps after an undetected event in which an alert counts as "after the end"
# The targets (#11, Benchmarks).
RECALL_TARGET: dict[str, float] = {
    "spike": 0.95, "level_shift": 0.95, "stuck": 0.95, "silent": 0.95, "out_of_range": 0.95,
    "drift": 0.85, "variance_burst": 0.85,
}
TARGETS = {
    "event_recall": RECALL_TARGET,
    "spike_delay_steps": 0,
    "false_alerts_per_1k_clean_stream_hours": 1.0,
    "predicted_before_crossing": 0.90,
}


@dataclass(frozen=True, slots=True)
class AlertMark:
    """One alert event, on its stream's step grid."""

    stream: str
    step: int
    state: str  # firing | resolved
    check: str
    kind: str


@dataclass(frozen=True, slots=True)
class FaultEvent:
    stream: str
    kind: str
    start: int
    end: int
    magnitude: float
    crossing: int | None = None  # degradations: first step beyond the operating limit


@dataclass(frozen=True, slots=True)
class EventResult:
    event: FaultEvent
    detected: bool
    delay: int | None  # steps from start to the first firing alert in the window
    first_check: str  # check of that alert ("" when not detected)
    named: bool  # an alert in the window names the expected check or kind
    covered: float  # share of the event's steps with some check firing
    predicted_before: bool  # degradations: predicted_breach fired before the crossing
    after_end: bool = False  # not detected, but some check fired just after the event ended


def firing_intervals(marks: Iterable[AlertMark], end_step: int) -> dict[str, list[tuple[int, int]]]:
    """Per stream, the ``[fired, resolved)`` step intervals of every check (a check still
    firing at the end runs to ``end_step``)."""
    open_at: dict[tuple[str, str], int] = {}
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for m in sorted(marks, key=lambda m: (m.step, m.state != "resolved")):  # resolve before firing at a step
        key = (m.stream, m.check)
        if m.state == "firing":
            open_at.setdefault(key, m.step)
        elif key in open_at:
            out[m.stream].append((open_at.pop(key), m.step))
    for (stream, _), s in open_at.items():
        out[stream].append((s, end_step))
    return dict(out)


def _coverage(intervals: Sequence[tuple[int, int]], start: int, end: int) -> float:
    hit = np.zeros(end - start, dtype=bool)
    for a, b in intervals:
        lo, hi = max(a, start), min(b, end)
        if lo < hi:
            hit[lo - start : hi - start] = True
    return float(hit.mean()) if end > start else 0.0


def match_events(
    events: Sequence[FaultEvent], marks: Sequence[AlertMark], end_step: int, slack: int
) -> list[EventResult]:
    by_stream: dict[str, list[AlertMark]] = defaultdict(list)
    for m in marks:
        if m.state == "firing":
            by_stream[m.stream].append(m)
    intervals = firing_intervals(marks, end_step)
    out: list[EventResult] = []
    for ev in events:
        fired = sorted((m for m in by_stream.get(ev.stream, ()) if ev.start <= m.step < ev.end + slack),
                       key=lambda m: m.step)
        want = EXPECTED.get(ev.kind, ev.kind)
        before = ev.crossing is not None and any(
            m.check == "predicted_breach" and ev.start <= m.step < ev.crossing for m in by_stream.get(ev.stream, ())
        )
        late = not fired and any(
            ev.end + slack <= m.step < ev.end + slack + AFTER_END for m in by_stream.get(ev.stream, ())
        )
        out.append(EventResult(
            event=ev, detected=bool(fired), delay=fired[0].step - ev.start if fired else None,
            first_check=fired[0].check if fired else "",
            named=any(want in (m.check, m.kind) for m in fired),
            covered=_coverage(intervals.get(ev.stream, []), ev.start, ev.end),
            predicted_before=before, after_end=late,
        ))
    return out


def false_alerts(marks: Sequence[AlertMark], clean: set[str], warmup: int) -> dict[str, int]:
    """Firing alerts per check on the clean streams, after the warm-up."""
    counts: dict[str, int] = defaultdict(int)
    for m in marks:
        if m.state == "firing" and m.stream in clean and m.step >= warmup:
            counts[m.check] += 1
    return dict(counts)


def unmatched(marks: Sequence[AlertMark], events: Sequence[FaultEvent], settle: int, warmup: int) -> int:
    """Firing alerts on faulty streams outside every event (and its ``settle`` steps after)."""
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for ev in events:
        spans[ev.stream].append((ev.start, ev.end + settle))
    return sum(
        1 for m in marks
        if m.state == "firing" and m.stream in spans and m.step >= warmup
        and not any(a <= m.step < b for a, b in spans[m.stream])
    )


def _pct(values: Sequence[int], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarise(results: Sequence[EventResult], false_counts: dict[str, int], clean_hours: float) -> dict[str, Any]:
    """Per kind and per magnitude: the report's numbers (None where nothing to measure)."""
    kinds: dict[str, Any] = {}
    by_kind: dict[str, list[EventResult]] = defaultdict(list)
    for r in results:
        by_kind[r.event.kind].append(r)
    for kind, rs in by_kind.items():
        delays = [r.delay for r in rs if r.delay is not None]
        row: dict[str, Any] = {
            "events": len(rs),
            "event_recall": sum(r.detected for r in rs) / len(rs),
            "after_end": sum(r.after_end for r in rs) / len(rs),
            "named_recall": sum(r.named for r in rs) / len(rs),
            "pointwise_recall": float(np.mean([r.covered for r in rs])),
            "delay_median": _pct(delays, 50), "delay_p90": _pct(delays, 90),
            "first_checks": dict(sorted(_count(r.first_check for r in rs if r.detected).items())),
            "by_magnitude": {
                f"{m:g}": sum(r.detected for r in rs if abs(r.event.magnitude) == m)
                / sum(1 for r in rs if abs(r.event.magnitude) == m)
                for m in sorted({abs(r.event.magnitude) for r in rs})
            },
        }
        if kind == "degradation":
            row["predicted_before_crossing"] = sum(r.predicted_before for r in rs) / len(rs)
        kinds[kind] = row
    total = sum(false_counts.values())
    return {
        "kinds": kinds,
        "false_alerts": total,
        "false_alerts_by_check": dict(sorted(false_counts.items())),
        "clean_stream_hours": clean_hours,
        "false_alerts_per_1k_clean_stream_hours": 1000.0 * total / clean_hours if clean_hours > 0 else math.nan,
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[x] += 1
    return dict(out)
