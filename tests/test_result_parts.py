"""A result zip of only some parts (?parts=), for a link that cannot carry the whole zip;
and a deletion while a zip is being built."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path
from typing import Any

from .conftest import scene_png, upload, wait_finished, zip_bytes


async def _zip(client: Any, job_id: str, parts: str | None = None) -> tuple[str, zipfile.ZipFile]:
    query = {} if parts is None else {"parts": parts}
    resp = await client.get(f"/api/archive/{job_id}", params=query)
    assert resp.status == 200, await resp.text()
    url = (await resp.json())["archive_url"]
    resp = await client.get(url)
    assert resp.status == 200
    return url, zipfile.ZipFile(io.BytesIO(await resp.read()))


async def test_parts_make_smaller_zips_of_only_those_parts(client: Any) -> None:
    files = {f"survey/img_{i:03d}.png": scene_png(160, 120, seed=i) for i in range(12)}
    status, body = await upload(client, zip_bytes(files))
    assert status == 202
    job = body["job_id"]
    await wait_finished(client, job, 60)

    whole_url, whole = await _zip(client, job)
    url, small = await _zip(client, job, "summary,spills")
    names = set(small.namelist())
    assert {"summary.csv", "summary.json", "README.txt", "spills.geojson"} <= names
    assert not any(n.startswith(("masks/", "overlays/")) for n in names)
    # Every slick is in spills.geojson; each image's own file comes only beside its mask.
    assert not any(n.startswith("spills/") for n in names)
    assert any(n.startswith("spills/") for n in whole.namelist())
    assert "This zip holds only: summary, spills" in small.read("README.txt").decode()
    assert url != whole_url and url.endswith("-summary-spills.zip")
    assert {n for n in whole.namelist() if n.startswith("masks/")} == {
        f"masks/survey/img_{i:03d}.png" for i in range(12)}

    _, masks = await _zip(client, job, "masks")
    assert {n for n in masks.namelist() if n != "README.txt"} == {
        f"masks/survey/img_{i:03d}.png" for i in range(12)}
    # The order asked for does not matter: one file per choice.
    again, _ = await _zip(client, job, "spills,summary")
    assert again == url
    for bad in ("", "thumbnails", "summary,,nope"):
        resp = await client.get(f"/api/archive/{job}", params={"parts": bad})
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_query"
    for forged in (url.replace("summary-spills", "spills-summary"),
                   url.replace("summary-spills", "summary-spills-masks-overlays")):
        resp = await client.get(forged)
        assert resp.status == 404


async def test_a_deletion_during_a_build_leaves_nothing(client: Any, data_dir: Path) -> None:
    files = {f"img_{i:03d}.png": scene_png(400, 300, seed=i) for i in range(24)}
    status, body = await upload(client, zip_bytes(files))
    assert status == 202
    job = body["job_id"]
    await wait_finished(client, job, 120)
    build = asyncio.ensure_future(client.get(f"/api/archive/{job}"))
    await asyncio.sleep(0.05)
    resp = await client.delete(f"/api/job/{job}")
    assert resp.status == 200
    answer = await build
    assert answer.status in (200, 410), await answer.text()  # finished first, or gone
    await asyncio.sleep(0.2)
    assert not (data_dir / "jobs" / job).exists()
