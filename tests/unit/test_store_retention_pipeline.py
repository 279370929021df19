"""The ingest process runs the store retention addon (service/pipeline.py), only when configured."""

from __future__ import annotations

from pathlib import Path

from service.config import Settings


def test_ingest_process_runs_it_when_configured(tmp_path: Path) -> None:
    from service.pipeline import Pipeline

    for days, expected in ((None, []), (30.0, ["store retention"])):
        s = Settings(roles=["ingest"], store={"url": f"sqlite:///{tmp_path}/p.db", "retention_days": days,  # type: ignore[arg-type]
                                              "spool_dir": tmp_path / "spool"})
        pipe = Pipeline.build(s)
        assert [a.name for a in pipe.addons] == expected
        pipe.stop()
