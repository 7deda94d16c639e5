"""`oilspill submit / status / fetch` as a script runs them, against real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import pytest
from rasterio.io import MemoryFile

from ml_stub.scenes import write_zip
from oilspill.client.commands import content_type_of

from .procs import Api, free_port, poll
from .test_openapi import write_scene


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
        rows = json.loads(zf.read("summary.json"))
    slicks = sum(r["slick_count"] for r in rows)
    assert slicks > 0
    assert f"  slicks               {slicks}\n" in out
    assert "  km\u00b2                  n/a\n" in out  # pictures: no georeference, no area
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
    assert report["slicks"] == sum(r["slick_count"] for r in report["rows"])
    assert report["total_area_km2"] is None  # pictures without georeference
    assert {r["filename"] for r in report["rows"]} == {f"sub/scene_{i:03d}.png"
                                                       for i in range(4)}
    assert Path(report["result"]).is_file()


async def test_submit_a_bare_geotiff_scene(stack_factory, tmp_path):
    """One GeoTIFF, sent as it is, cut by the server into 3 x 3 tiles and an overview: the
    result zip holds its stitched GeoTIFF mask, and the table counts the tiles."""
    stack = await stack_factory(OILSPILL_TILE_PX="256", OILSPILL_TILE_OVERLAP_PX="32")
    write_scene(tmp_path / "gulf_scene.tif")
    code, out, err = await oilspill(tmp_path, "submit", "gulf_scene.tif", "--server",
                                    stack.base, "--out", "results.zip")
    assert code == 0, err
    assert "images               1" in out and "tiles                10" in out
    assert "done                 1" in out and "failed               0" in out
    with zipfile.ZipFile(tmp_path / "results.zip") as zf:
        assert [n for n in zf.namelist() if n.startswith("masks/")] == ["masks/gulf_scene.tif"]
        (row,) = json.loads(zf.read("summary.json"))
        mask = zf.read("masks/gulf_scene.tif")
    assert (row["filename"], row["tiles"], row["crs"]) == ("gulf_scene.tif", 9, "EPSG:32633")
    assert row["total_area_km2"] > 0
    assert f"  slicks               {row['slick_count']}\n" in out
    assert f"  km\u00b2                  {row['total_area_km2']:.2f}\n" in out
    with MemoryFile(mask) as memory, memory.open() as dataset:
        assert (dataset.width, dataset.height, dataset.crs.to_epsg()) == (700, 500, 32633)
        assert dataset.transform.a == 10.0
        assert (dataset.read(1) == 255).any()  # the dark band is oil

    code, out, _ = await oilspill(tmp_path, "submit", "gulf_scene.tif", "--server",
                                  stack.base, "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["images"], report["done"], report["tiles"]) == (1, 1, 10)
    (row,) = report["rows"]
    assert report["slicks"] == row["slick_count"] >= 1
    assert report["total_area_km2"] == pytest.approx(row["total_area_km2"])


@pytest.mark.parametrize(("head", "content_type"), [
    (b"II*\x00\x08\x00", "image/tiff"), (b"II+\x00\x08\x00", "image/tiff"),
    (b"MM\x00*\x00\x00", "image/tiff"), (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff\xe0", "image/jpeg"), (b"PK\x03\x04", "application/zip"),
    (b"hello", "application/octet-stream"), (b"", "application/octet-stream")])
def test_a_file_is_labelled_by_its_first_bytes(head, content_type):
    assert content_type_of(head) == content_type


async def test_no_wait_then_status_and_fetch(stack_factory, tmp_path):
    stack = await stack_factory(["--latency-ms", "100"])
    write_zip(tmp_path / "scenes.zip", 3, (96, 96), seed=3)
    code, out, _ = await oilspill(tmp_path, "submit", "scenes.zip", "--server", stack.base,
                                  "--no-wait")
    assert code == 0
    job_id = out.strip()
    code, out, _ = await oilspill(tmp_path, "status", job_id, "--server", stack.base)
    assert code in (0, 5) and job_id in out and " of 3 tiles" in out
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
    job_id = out.split(":", 1)[0].removeprefix("job ")
    code, out, err = await oilspill(tmp_path, "fetch", job_id, "--server", stack.base,
                                    "--geojson", "slicks.geojson")
    assert code == 1  # like fetch: the job has a failed image
    assert "  km\u00b2                  n/a\n" in out  # pictures: pixels, no area
    assert err.strip().splitlines()[-1] == "oilspill: 1 of 3 images failed"
    assert json.loads((tmp_path / "slicks.geojson").read_text())["type"] == "FeatureCollection"


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
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oilspill", "submit", "scenes.zip", "--server", stack.base,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert client.stdout and client.stderr
    out_reader = asyncio.create_task(client.stdout.read())
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base)

        async def three_done() -> bool | None:
            folders = list((tmp_path / "data" / "jobs").glob("*"))
            if not folders:
                return None
            status, job = await api.get(f"/api/job/{folders[0].name}")
            return True if status == 200 and job["done"] >= 3 else None
        await poll(three_done, "three images done", 60)
    await stack.server.kill()

    async def client_retrying() -> str:
        assert client.stderr
        while line := (await client.stderr.readline()).decode():
            if "retrying" in line:
                return line
        raise AssertionError("the client ended without retrying")
    retry_line = await asyncio.wait_for(client_retrying(), 60)  # it met the dead server
    assert "unreachable" in retry_line
    await stack.start_server()
    err = (await asyncio.wait_for(client.stderr.read(), 120)).decode()
    out = (await out_reader).decode()
    assert await client.wait() == 0, err
    assert "done                 12" in out and "failed               0" in out


async def test_fetch_geojson_saves_only_the_jobs_slicks(stack_factory, tmp_path):
    """`fetch --geojson FILE`: for a satellite link, only the job's GeoJSON (kilobytes),
    equal to the API's; no zip is built or downloaded."""
    stack = await stack_factory(OILSPILL_TILE_PX="256", OILSPILL_TILE_OVERLAP_PX="32")
    write_scene(tmp_path / "gulf_scene.tif")
    code, out, err = await oilspill(tmp_path, "submit", "gulf_scene.tif", "--server",
                                    stack.base, "--no-wait")
    assert code == 0, err
    job_id = out.strip()
    code, out, err = await oilspill(tmp_path, "fetch", job_id, "--server", stack.base,
                                    "--geojson", "slicks.geojson")
    assert code == 0, err
    saved = json.loads((tmp_path / "slicks.geojson").read_text())
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base)
        status, job = await api.get(f"/api/job/{job_id}")
        assert status == 200 and job["finished_at"] is not None
        assert job["archive_url"] is None  # the result zip was never built
        async with session.get(f"{stack.base}/api/job/{job_id}/spills.geojson") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/geo+json"
            served = json.loads(await resp.read())
    assert saved == served
    assert saved["type"] == "FeatureCollection" and "properties" not in saved  # lon/lat
    props = [f["properties"] for f in saved["features"]]
    assert props and all(f["geometry"]["type"] in ("Polygon", "MultiPolygon")
                         for f in saved["features"])
    assert [p["slick_id"] for p in props] == list(range(1, len(props) + 1))
    total = sum(p["area_km2"] for p in props)
    assert f"job {job_id}: slicks in slicks.geojson" in out
    assert f"  slicks               {len(props)}\n" in out
    assert f"  km\u00b2                  {total:.2f}\n" in out
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob("*.part"))

    code, out, _ = await oilspill(tmp_path, "fetch", job_id, "--server", stack.base,
                                  "--geojson", "again.geojson", "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["job_id"], report["status"], report["slicks"]) == (job_id, "done",
                                                                      len(props))
    assert report["total_area_km2"] == pytest.approx(total, abs=1e-5)
    assert Path(report["geojson"]) == (tmp_path / "again.geojson").resolve()
    assert json.loads((tmp_path / "again.geojson").read_text()) == served
    assert not list(tmp_path.glob("*.zip"))

    code, _, err = await oilspill(tmp_path, "fetch", job_id, "--server", stack.base,
                                  "--geojson", "x.geojson", "--out", "x.zip")
    assert code == 2 and "exclusive" in err


def test_the_client_starts_without_the_servers_heavy_imports():
    """A field laptop starts `oilspill submit` fast: no numpy, scipy, Pillow, rasterio,
    shapely or pyproj on the way."""
    code = ("import sys, oilspill.cli, oilspill.client.commands; "
            "print(sorted(m for m in ('numpy', 'scipy', 'PIL', 'rasterio', 'shapely', "
            "'pyproj') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "[]"
