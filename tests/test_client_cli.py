"""`oilspill submit / status / fetch` as a script runs them, against real processes."""

from __future__ import annotations

import asyncio
import json
import sys
import zipfile
from pathlib import Path

import aiohttp

from ml_stub.scenes import write_zip

from .procs import Api, free_port


async def oilspill(cwd: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oilspill", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_submit_waits_downloads_and_prints_a_table(stack_factory, tmp_path):
    stack = await stack_factory()
    write_zip(tmp_path / "scenes.zip", 5, (160, 160), seed=1)
    code, out, err = await oilspill(tmp_path, "submit", "scenes.zip", "--server", stack.base,
                                    "--out", "results.zip")
    assert code == 0, err
    assert "images               5" in out and "failed               0" in out
    assert "images with oil      5" in out and "largest oil fraction" in out
    with zipfile.ZipFile(tmp_path / "results.zip") as zf:
        assert len([n for n in zf.namelist() if n.startswith("masks/")]) == 5
    assert "\r" not in err  # no progress bars when stderr is not a terminal


async def test_submit_a_folder_with_json_output(stack_factory, tmp_path):
    stack = await stack_factory()
    write_zip(tmp_path / "scenes.zip", 4, (128, 128), seed=2)
    with zipfile.ZipFile(tmp_path / "scenes.zip") as zf:
        zf.extractall(tmp_path / "folder" / "sub")
    (tmp_path / "folder" / ".DS_Store").write_bytes(b"junk")
    code, out, _ = await oilspill(tmp_path, "submit", "folder", "--server", stack.base,
                                  "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["images"], report["done"], report["failed"]) == (4, 4, 0)
    assert {r["filename"] for r in report["rows"]} == {f"sub/scene_{i:03d}.png"
                                                       for i in range(4)}
    assert Path(report["result"]).is_file()


async def test_no_wait_then_status_and_fetch(stack_factory, tmp_path):
    stack = await stack_factory(["--latency-ms", "100"])
    write_zip(tmp_path / "scenes.zip", 3, (96, 96), seed=3)
    code, out, _ = await oilspill(tmp_path, "submit", "scenes.zip", "--server", stack.base,
                                  "--no-wait")
    assert code == 0
    job_id = out.strip()
    code, out, _ = await oilspill(tmp_path, "status", job_id, "--server", stack.base)
    assert code in (0, 5) and job_id in out
    code, out, _ = await oilspill(tmp_path, "fetch", job_id, "--server", stack.base,
                                  "--out", "later.zip")
    assert code == 0 and (tmp_path / "later.zip").is_file()
    code, out, _ = await oilspill(tmp_path, "status", job_id, "--server", stack.base,
                                  "--json")
    assert code == 0 and json.loads(out)["done"] == 3


async def test_failed_images_exit_1_with_a_reason(stack_factory, tmp_path):
    stack = await stack_factory()
    write_zip(tmp_path / "scenes.zip", 2, (96, 96), seed=4)
    with zipfile.ZipFile(tmp_path / "scenes.zip", "a") as zf:
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    code, out, err = await oilspill(tmp_path, "submit", "scenes.zip", "--server", stack.base)
    assert code == 1
    assert err.strip().splitlines()[-1] == "oilspill: 1 of 3 images failed"
    assert "failed: broken.png: cannot read image" in out


async def test_a_refused_upload_exits_3(stack_factory, tmp_path):
    stack = await stack_factory()
    (tmp_path / "notes.zip").write_text("not a zip")
    code, _, err = await oilspill(tmp_path, "submit", "notes.zip", "--server", stack.base)
    assert code == 3 and "400" in err and "not a readable zip" in err


async def test_an_unreachable_server_exits_4(tmp_path):
    code, _, err = await oilspill(tmp_path, "status", "0" * 8 + "-0000-4000-8000-" + "0" * 12,
                                  "--server", f"http://127.0.0.1:{free_port()}",
                                  "--give-up-s", "1")
    assert code == 4 and "no answer" in err


async def test_submit_survives_a_server_restart_mid_job(stack_factory, tmp_path):
    stack = await stack_factory(["--latency-ms", "150"], OILSPILL_CONCURRENCY="1")
    write_zip(tmp_path / "scenes.zip", 12, (96, 96), seed=5)
    client = asyncio.create_task(oilspill(tmp_path, "submit", "scenes.zip", "--server",
                                          stack.base, "--json"))
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base)
        done = 0
        while done < 3:  # until the job exists and three images are done
            await asyncio.sleep(0.05)
            folders = list((tmp_path / "data" / "jobs").glob("*"))
            if folders:
                status, job = await api.get(f"/api/job/{folders[0].name}")
                done = job["done"] if status == 200 else 0
    await stack.server.kill()
    await asyncio.sleep(1.5)  # the client meets a dead server, and retries
    await stack.start_server()
    code, out, err = await client
    assert code == 0, err
    report = json.loads(out)
    assert (report["done"], report["failed"]) == (12, 0)
