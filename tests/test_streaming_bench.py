"""``telephony bench streaming`` runs end to end (a small level) and reports what it measured."""

from __future__ import annotations

import json

from telephony.cli import main


def test_streaming_bench_small_level(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "streaming", "--legs", "4", "--seconds", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (level,) = report["levels"]
    assert level["legs"] == 4 and level["connections"] == 4
    assert level["audio_received_min_s"] >= 0.99 * level["seconds"]  # every leg's audio reached the service
    assert level["server_pace_max"] <= 1.05 and level["cpu_per_leg"] > 0
    assert "legs_per_core" in capsys.readouterr().out


def test_streaming_bench_bad_arguments_exit_with_usage(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["bench", "streaming", "--legs", "many"])
    assert exc.value.code == 2 and "--legs" in capsys.readouterr().err
