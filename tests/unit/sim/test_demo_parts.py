"""Pure parts of `sensorcast demo`: the anomaly schedule, model discovery, port choice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tools.demo import KINDS_IN_TURN, _listen, find_model, schedule


def test_schedule_rotates_streams_and_kinds() -> None:
    ids = ["a/temperature", "b/temperature", "c/humidity"]
    got = schedule(ids, first_step=100, every_steps=45, count=7)
    assert [sid for sid, _ in got] == [*ids, *ids, ids[0]]
    assert [s.step for _, s in got] == [100 + 45 * i for i in range(7)]
    assert [s.kind for _, s in got][:5] == list(KINDS_IN_TURN)
    assert got[0][1].kind == "spike" and got[0][1].duration == 1
    assert all(s.magnitude >= 0 for _, s in got if s.kind == "variance_burst")
    assert got[5][1].magnitude < 0  # second round: offsets the other way
    # Sized in daily amplitudes: 3 x 3.0 degC = 9 degC for a temperature spike (75 sigmas).
    assert got[0][1].magnitude == pytest.approx(3.0 * 3.0 / 0.12)


def test_find_model_prefers_demo_and_the_newest(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from tools.modelkit import KitSpec, write_model

    write_model(tmp_path, KitSpec(name="other", version="1", cadence_s=5.0))
    write_model(tmp_path, KitSpec(name="demo", version="1", cadence_s=1.0, warmup_steps=7))
    m = find_model(tmp_path, None)
    assert (m.name, m.version, m.cadence_s, m.warmup_steps) == ("demo", "1", 1.0, 7)
    assert find_model(tmp_path, "other").cadence_s == 5.0
    with pytest.raises(SystemExit, match="no model 'nope' found"):
        find_model(tmp_path, "nope")


def test_find_model_reports_broken_artefacts(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from tools.modelkit import KitSpec, write_model

    folder, _ = write_model(tmp_path, KitSpec(name="demo", version="1"))
    (folder / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(SystemExit, match="does not match manifest"):
        find_model(tmp_path, None)


def test_default_port_falls_back_when_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        import tools.demo as demo

        old = demo.DEFAULT_PORT
        demo.DEFAULT_PORT = taken
        try:
            s = _listen("127.0.0.1", None)
            assert s.getsockname()[1] != taken
            s.close()
            with pytest.raises(SystemExit, match="cannot listen"):
                _listen("127.0.0.1", taken)
        finally:
            demo.DEFAULT_PORT = old


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--quantities", "temperature,flux"],
        ["demo", "--devices", "0"],
        ["demo", "--every", "0"],
        ["simulate", "--duration", "-1"],
        ["simulate", "--rate", "0"],
        ["simulate", "--bad-rate", "2"],
        ["replay", "x.csv", "--speed", "-1"],
        ["replay", "x.csv", "--scale-time"],
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sensorcast {argv[0]}: ") and "Traceback" not in err
