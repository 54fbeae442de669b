"""bench/bridge_calls.py at two calls in each media mode: the whole bench chain (wacall, the bridge, RtpEngine in
rtpengine mode, Kamailio, the PBX-side load agent) comes up, both calls carry media both ways, and the report renders. Loss and
CPU figures are the benchmark's business, not asserted here (a shared machine makes them timings)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bridge_calls  # noqa: E402


@pytest.mark.parametrize("mode", ["rtpengine", "builtin"])
def test_the_bridge_bench_carries_two_calls_both_ways(tmp_path: Path, mode: str):
    args = bridge_calls.parser().parse_args(["--hold-seconds", "2", "--settle", "0.5", "--sample", "2",
                                             "--media-workers", "1", "--setup-timeout", "20"])
    lines: list[str] = []
    result = bridge_calls.ramp(mode, args, [2], time.monotonic() + 120, tmp_path, lines.append)
    assert "error" not in result, lines
    [step] = result["steps"]
    assert step["active"] == 2 and step["setup"]["calls_with_media"] == 2, lines
    assert step["user_to_pbx"]["calls"] == 2 and step["user_to_pbx"]["rx_packets"] > 0, lines   # user -> agent
    assert step["pbx_to_user"]["sampled_calls"] == 2 and step["pbx_to_user"]["rx_packets"] > 0, lines   # agent -> user
    assert all(step["cpu"][name]["cpu_seconds"] >= 0 for name in ("wacall", "bridge", "kamailio", "agent"))
    assert bool(result["pids"]["rtpengine"]) == (mode == "rtpengine")
    results = {"modes": {mode: result}}
    bridge_calls.report(results, lines.append)
    assert results["summary"][mode]["max_calls_passed"] in (0, 2)
    assert any(line.split()[:2] == [mode, "2"] for line in lines), lines
    assert f"| {mode} | 2 | 2 |" in bridge_calls.markdown(results)
