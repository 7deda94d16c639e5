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
