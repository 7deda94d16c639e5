"""The whole path: upload -> SQLite job -> worker pool -> ML stub -> result zip."""

from __future__ import annotations

import csv
import io
import json
import zipfile

from PIL import Image

from .conftest import scene_png, upload, wait_finished, zip_bytes

SIZES = [(200, 150), (256, 256), (130, 300), (320, 180), (160, 160)]


async def test_five_images_end_to_end(client):
    files = {f"batch/img_{i}.png": scene_png(w, h, seed=i) for i, (w, h) in enumerate(SIZES)}
    status, body = await upload(client, zip_bytes(files))
    assert status == 202, body
    assert body["status"] == "queued" and len(body["task_ids"]) == 5

    job = await wait_finished(client, body["job_id"])
    assert (job["status"], job["total"], job["done"], job["failed"]) == ("done", 5, 5, 0)

    tasks = {}
    for task_id in body["task_ids"]:
        resp = await client.get(f"/api/task/{task_id}")
        task = await resp.json()
        assert task["status"] == "done" and task["error"] is None
        tasks[task["filename"]] = task

    resp = await client.get(f"/api/archive/{body['job_id']}")
    assert resp.status == 200
    url = (await resp.json())["archive_url"]
    again = await client.get(f"/api/archive/{body['job_id']}")
    assert (await again.json())["archive_url"] == url

    resp = await client.get(url)
    assert resp.status == 200
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
        names = set(zf.namelist())
        rows = json.loads(zf.read("summary.json"))
        csv_rows = list(csv.DictReader(io.StringIO(zf.read("summary.csv").decode())))
        masks = {n: Image.open(io.BytesIO(zf.read(n))) for n in names if n.startswith("masks/")}
    assert len(masks) == 5
    assert len(rows) == len(csv_rows) == 5
    for name, (w, h) in zip(files, SIZES, strict=True):
        mask = masks[f"masks/{name[:-4]}.png"]
        assert (mask.size, mask.mode) == ((w, h), "L")
        row = next(r for r in rows if r["filename"] == name)
        oil = sum(mask.histogram()[128:])
        assert row["oil_pixels"] == oil == tasks[name]["result"]["oil_pixels"]
        assert row["oil_fraction"] == tasks[name]["result"]["oil_fraction"] == oil / (w * h)
        assert (row["width"], row["height"]) == (w, h)
        csv_row = next(r for r in csv_rows if r["filename"] == name)
        assert int(csv_row["oil_pixels"]) == oil and csv_row["status"] == "done"
    # The generated scenes do have slicks: the stub finds some oil in every one.
    assert all(r["oil_pixels"] > 0 for r in rows)


async def test_mask_is_served_per_task(client):
    status, body = await upload(client, zip_bytes({"a.png": scene_png(40, 30)}))
    assert status == 202
    await wait_finished(client, body["job_id"])
    task = await (await client.get(f"/api/task/{body['task_ids'][0]}")).json()
    resp = await client.get(task["result"]["mask_url"])
    assert resp.status == 200 and resp.content_type == "image/png"
    assert Image.open(io.BytesIO(await resp.read())).size == (40, 30)
