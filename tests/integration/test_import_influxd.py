"""`sensorcast import` into a real influxd (1.x HTTP API): what is read back is what the file held."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cli import main
from service.config import StoreSettings
from service.records import NS_PER_S, StreamKey
from service.store import open_store
from service.tabular import parse_time
from tools.localservers import Influxd

pytestmark = pytest.mark.integration


def test_import_into_influxd(influxd: Influxd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    influxd.create_db("imported")
    url = f"influxdb://127.0.0.1:{influxd.port}/imported"
    monkeypatch.setenv("SENSORCAST_STORE__URL", url)
    monkeypatch.setenv("SENSORCAST_STREAMS__SETTINGS_PATH", str(tmp_path / "settings.sqlite"))
    monkeypatch.setenv("SENSORCAST_INGEST__BATCH_SIZE", "1000")  # several batches
    t0 = parse_time("2014-02-01T00:00:00Z")
    lines = ["date\tflow [m3/h]\tlevel"]
    for i in range(2500):
        lines.append(f"{(t0 // NS_PER_S) + 60 * i}\t{i / 10:.1f}\t{'' if i % 100 == 7 else i % 13}")
    f = tmp_path / "tank.csv"
    f.write_text("\n".join(lines) + "\n")
    assert main(["import", str(f), "--tag", "site=north"]) == 0
    out = capsys.readouterr().out
    assert "stored 4975 readings" in out and "refused 25 cells empty" in out
    assert "tank/flow;site=north [m3/h]: 2500 readings, 2014-02-01T00:00:00Z .. 2014-02-02T17:39:00Z" in out
    store = open_store(StoreSettings(url=url))
    try:
        flow = store.read_range(StreamKey("tank", "flow", (("site", "north"),)), 0, 2**62)
        level = store.read_range(StreamKey("tank", "level", (("site", "north"),)), 0, 2**62)
    finally:
        store.close()
    assert [(r.ts_ns, r.value) for r in flow] == [(t0 + 60 * i * NS_PER_S, i / 10) for i in range(2500)]
    assert len(level) == 2475 and level[8].ts_ns == t0 + 9 * 60 * NS_PER_S  # row 7 had no level
