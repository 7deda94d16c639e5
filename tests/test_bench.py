"""The benchmark keeps working: run at tiny sizes (no timing is asserted, only that it ran)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_writes_its_numbers(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    for run in ("throughput_c8", "throughput_c32"):
        assert results[run]["done"] == results[run]["images"] and results[run]["failed"] == 0
    assert results["upload_memory"]["tasks"] == 1
    assert [r["images"] for r in results["scale"]] == [20, 50]
    assert "img/s of a 400 limit" in proc.stdout


def test_bench_scene_runs_a_tiny_scene_and_writes_its_numbers(tmp_path):
    out = tmp_path / "bench-out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "scene", "--width", "1500", "--height", "1200",
         "--tile-px", "512", "--latency-ms", "20", "--idle-s", "0.2", "--timeout-s", "60",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "scene.json").read_text())
    run = results["run"]
    assert run["status"] == "done" and run["failed"] == 0 and run["done"] == 1
    # 4 x 3 tiles of 512 overlapping by 128, and the overview.
    assert run["tiles_total"] == run["tiles_done"] == 13
    assert run["wall_s"] > 0 and run["ideal_s"] > 0 and run["ratio"] > 0
    assert run["upload"]["bytes"] == results["scene"]["bytes"] > 1500 * 1200 * 2
    memory = run["memory"]
    assert memory["vmhwm_mib"] >= memory["idle_vmrss_mib"] > 0
    assert set(run["stages"]) >= {"survey", "tiles", "stitch"}
    assert run["cpu"]["server_ms_per_tile"] > 0
    # Every unit sent (a tile of border only is not), each taking at least the latency.
    calls = run["ml_calls"]
    assert 13 <= calls["calls"] <= 13 + 2 and calls["mean_latency_ms"] >= 20
    assert not list(out.glob("*.tif"))  # the scene is removed without --keep
    assert "job wall time" in proc.stdout
