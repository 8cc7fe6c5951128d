"""The WebRTC benchmark runs end to end (service and softphones in their own processes) and reports sane numbers."""

from __future__ import annotations

import pytest

from telephony.config import Settings
from telephony.bench.webrtc import bench_webrtc, table


@pytest.mark.slow
async def test_smallest_benchmark(tmp_path):
    s = Settings()
    s.service.data_dir = str(tmp_path)
    res = await bench_webrtc(s, no_asr_levels=(2,), asr_levels=(), duration_s=3.0, progress=None)
    (level,) = res["levels"]
    assert level["connected"] == 2 and level["legs"] == 4 and not level["errors"]
    # 2 sessions × 2 tracks × (3 s + ramp) of 20 ms packets reached the legs' jitter buffers.
    assert level["packets"]["received"] >= 4 * 3.0 / 0.02
    assert level["packets"]["lost"] == 0
    assert 0 < level["connect_ms_p50"] < 2000 and level["server_cores"] > 0
    assert res["max_sessions_no_asr"] in (0, 2) and res["max_sessions_asr"] is None
    assert "not measured with ASR" in table(res)
