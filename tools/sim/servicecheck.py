"""What the service did with a replay's readings, read from its Prometheus counters.

The broker acknowledging a publish says nothing about the service keeping it: a reading
too old or too far ahead is refused by the ingester, one ahead of the engine's clock is
dropped for inference. ``replay`` scrapes ``GET /metrics`` before and after (once the
counters stop moving) and reports the difference by reason. The counters are the whole
service's: readings other clients sent meanwhile are counted too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

# counter family -> the label that splits it
COUNTERS = {
    "sensorcast_readings_in": "source",
    "sensorcast_readings_refused": "reason",
    "sensorcast_readings_late_dropped": "reason",
    "sensorcast_store_rejected": "reason",
}
# Refusals that mean "the file's times do not fit the live window", not bad data.
TIME_REASONS = ("too_old", "too_far_future", "future")
Counts = dict[tuple[str, str], float]


class Unreachable(Exception):
    """The service's /metrics cannot be read."""


@dataclass
class ServiceCheck:
    url: str  # the API's base URL
    key_file: Path | None = None
    timeout_s: float = 5.0
    before: Counts = field(default_factory=dict)

    def scrape(self) -> Counts:
        headers = {"X-API-Key": self.key_file.read_text().strip()} if self.key_file else {}
        try:
            r = httpx.get(self.url.rstrip("/") + "/metrics", headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as e:
            raise Unreachable(f"{type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise Unreachable(f"HTTP {r.status_code} from /metrics{' (set --api-key-file)' if r.status_code in (401, 403) else ''}")
        out: Counts = {}
        try:
            for fam in text_string_to_metric_families(r.text):
                label = COUNTERS.get(fam.name)
                if label is None:
                    continue
                for s in fam.samples:
                    if s.name == fam.name + "_total":
                        out[(fam.name, s.labels.get(label, ""))] = s.value
        except ValueError as e:
            raise Unreachable(f"/metrics is not Prometheus text: {e}") from None
        return out

    def start(self) -> None:
        self.before = self.scrape()

    def settle(self, drain_s: float, poll_s: float = 0.5) -> Counts:
        """The counters' growth since ``start``, once two scrapes ``poll_s`` apart agree (at most ``drain_s``)."""
        deadline = time.monotonic() + drain_s
        last = self.scrape()
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            now = self.scrape()
            if now == last:
                break
            last = now
        return {k: v - self.before.get(k, 0.0) for k, v in last.items() if v - self.before.get(k, 0.0) > 0}


def summary(delta: Counts) -> tuple[str, int, bool]:
    """One line of what the service did, the number refused or dropped, and whether times were the cause."""
    def part(family: str) -> tuple[int, str]:
        items = sorted(((r, int(v)) for (f, r), v in delta.items() if f == family), key=lambda x: -x[1])
        return sum(n for _, n in items), ", ".join(f"{r} {n}" for r, n in items)

    accepted, _ = part("sensorcast_readings_in")
    refused, refused_by = part("sensorcast_readings_refused")
    dropped, dropped_by = part("sensorcast_readings_late_dropped")
    rejected, rejected_by = part("sensorcast_store_rejected")
    text = f"accepted {accepted} readings; refused {refused}" + (f" ({refused_by})" if refused else "")
    text += f"; engine dropped {dropped}" + (f" ({dropped_by})" if dropped else "")
    if rejected:
        text += f"; store refused {rejected} ({rejected_by})"
    by_time = any(r in TIME_REASONS for (f, r) in delta if f != "sensorcast_readings_in")
    return text, refused + dropped + rejected, by_time


FIX = ("the file's times fall outside the service's live window (ingest.max_past_s, ingest.max_future_s, "
       "streams.max_future_s): replay with --backfill (real spacing, the last row at now), or write history "
       "straight into the store with `sensorcast import FILE.csv`")
