"""The command line as a user runs it: real processes, real ports."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import pytest

from .conftest import scene_png, zip_bytes
from .procs import Api, Process, clean_env, free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "oilspill", "demo", "--out", str(out),
                           "--images", "3"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "result zip:" in proc.stdout and len(re.findall(r" done +\d+\.\d\d%", proc.stdout)) == 3
    (result,) = out.glob("oilspill-results-*.zip")
    with zipfile.ZipFile(result) as zf:
        rows = json.loads(zf.read("summary.json"))
    assert [r["status"] for r in rows] == ["done"] * 3
    for row in rows:
        assert f"{row['oil_fraction']:7.2%}" in proc.stdout


def test_a_bad_setting_stops_start_up_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "oilspill", "serve"], cwd=tmp_path,
                          env=clean_env(OILSPILL_CONCURRENCY="many"), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "OILSPILL_CONCURRENCY" in lines[0]
    assert not (tmp_path / "data").exists()


async def serve_and_run_one_job(tmp_path: Path, env: dict[str, str]) -> dict:
    port = free_port()
    server = Process([sys.executable, "-m", "oilspill", "serve"], clean_env(
        OILSPILL_PORT=str(port), OILSPILL_DATA_DIR=str(tmp_path / "data"), **env), tmp_path)
    await server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http(f"{url}/healthz", server)
        async with aiohttp.ClientSession() as session:
            api = Api(session, url)
            job_id = (await api.upload(zip_bytes({"a.png": scene_png()})))["job_id"]
            job = await api.wait_job(job_id, timeout_s=30)
    finally:
        await server.signal(signal.SIGINT)
        code = await server.wait(30)
    assert code == 0, server.tail()
    assert any(f"listening on http://127.0.0.1:{port}" in line for line in server.lines)
    return job


async def test_serve_with_a_given_ml_service(tmp_path, ml_url):
    job = await serve_and_run_one_job(tmp_path, {"ML_SERVICE_URL": ml_url})
    assert job["status"] == "done"


async def test_serve_without_ml_service_url_runs_the_bundled_stub(tmp_path):
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 8002)) == 0:
            pytest.skip("port 8002 is taken on this machine: the bundled stub cannot start")
    job = await serve_and_run_one_job(tmp_path, {})
    assert job["status"] == "done"


async def test_an_open_server_beyond_loopback_warns_once(tmp_path, ml_url):
    """No token and a non-loopback address: one warning line at start."""
    port = free_port()
    proc = Process([sys.executable, "-m", "oilspill", "serve"], clean_env(
        OILSPILL_HOST="0.0.0.0", OILSPILL_PORT=str(port), ML_SERVICE_URL=ml_url,
        OILSPILL_DATA_DIR=str(tmp_path / "data")), tmp_path)
    await proc.start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    finally:
        await proc.signal(signal.SIGINT)
        await proc.wait(30)
    warnings = [ln for ln in proc.lines if "OILSPILL_API_TOKEN is not set" in ln]
    assert len(warnings) == 1 and "WARNING" in warnings[0]
