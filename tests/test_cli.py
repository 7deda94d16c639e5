"""The command line as a user runs it: real processes, real ports."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import aiohttp
import pytest

from .conftest import scene_png, zip_bytes
from .procs import clean_env, free_port

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


async def wait_healthy(url: str, proc: asyncio.subprocess.Process,
                       timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.returncode is None, "server exited early"
            try:
                async with session.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            await asyncio.sleep(0.05)


async def serve_and_run_one_job(tmp_path: Path, env: dict[str, str]) -> dict:
    port = free_port()
    env = clean_env(OILSPILL_PORT=str(port), OILSPILL_DATA_DIR=str(tmp_path / "data"), **env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oilspill", "serve", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, proc)
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("file", zip_bytes({"a.png": scene_png()}), filename="a.zip")
            async with session.post(f"{url}/api/upload/", data=form) as resp:
                assert resp.status == 202
                job_id = (await resp.json())["job_id"]
            deadline = time.monotonic() + 30
            while True:
                async with session.get(f"{url}/api/job/{job_id}") as resp:
                    job = await resp.json()
                if job["finished_at"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        raw, _ = await asyncio.wait_for(proc.communicate(), 30)
    output = raw.decode()
    assert proc.returncode == 0, output
    assert f"listening on http://127.0.0.1:{port}" in output
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
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oilspill", "serve", cwd=tmp_path,
        env=clean_env(OILSPILL_HOST="0.0.0.0", OILSPILL_PORT=str(port), ML_SERVICE_URL=ml_url,
                      OILSPILL_DATA_DIR=str(tmp_path / "data")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.send_signal(signal.SIGINT)
        raw, _ = await asyncio.wait_for(proc.communicate(), 30)
    warnings = [ln for ln in raw.decode().splitlines() if "OILSPILL_API_TOKEN is not set" in ln]
    assert len(warnings) == 1 and "WARNING" in warnings[0]
