"""The stub's detector against ground truth, its inputs, and the overlays a person looks at."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ml_stub.detector import DetectorOptions, detect_array
from ml_stub.scenes import encode, make_scene, to_uint8, to_uint16
from oilspill.outlines import LABEL_RGB, OUTLINE_RGB
from oilspill.web.app import create_app

from .conftest import upload, wait_finished, zip_bytes


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    union = (mask | truth).sum()
    return float((mask & truth).sum() / union) if union else 1.0


def test_detector_finds_the_slicks_and_not_the_look_alikes():
    """A fixed set of 12 scenes with two look-alikes and ships each (bench/ runs 50)."""
    scores = []
    for seed in range(12):
        scene = make_scene(384, 384, seed=300 + seed, lookalikes=2, ships=4)
        mask = detect_array(to_uint8(scene.intensity).astype(np.float32), DetectorOptions())
        scores.append(iou(mask, scene.truth))
    assert np.mean(scores) >= 0.80, scores
    assert min(scores) >= 0.50, scores


@pytest.mark.parametrize("seed", range(6))
def test_a_clean_sea_gives_an_empty_or_nearly_empty_mask(seed):
    scene = make_scene(384, 384, seed=900 + seed, slicks=0, lookalikes=2, ships=4)
    assert not scene.truth.any()
    mask = detect_array(to_uint8(scene.intensity).astype(np.float32), DetectorOptions())
    assert mask.mean() < 0.005


def scene_tasks(client, files: dict[str, bytes]):
    async def run():
        status, body = await upload(client, zip_bytes(files))
        assert status == 202, body
        job = await wait_finished(client, body["job_id"])
        tasks = {}
        for task_id in body["task_ids"]:
            task = await (await client.get(f"/api/task/{task_id}")).json()
            tasks[task["filename"]] = task
        return body, job, tasks
    return run()


async def mask_of(client, task) -> np.ndarray:
    resp = await client.get(task["result"]["mask_url"])
    return np.asarray(Image.open(io.BytesIO(await resp.read()))) >= 128


async def test_16_bit_float_and_rgb_inputs_are_segmented(client):
    """Each format gives the mask its 8-bit PNG twin gives, and finds the slicks."""
    scenes = {name: make_scene(320, 240, seed=seed, lookalikes=0)
              for name, seed in (("s16.tif", 13), ("f32.tif", 14), ("rgb.jpg", 15))}
    rgb = np.repeat(to_uint8(scenes["rgb.jpg"].intensity)[..., None], 3, axis=2)
    jpeg = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(jpeg, format="JPEG", quality=92)
    files = {"s16.tif": encode(to_uint16(scenes["s16.tif"].intensity), "TIFF"),
             "f32.tif": encode(scenes["f32.tif"].intensity.astype(np.float32), "TIFF"),
             "rgb.jpg": jpeg.getvalue()}
    _, job, tasks = await scene_tasks(client, files)
    assert (job["done"], job["failed"]) == (3, 0)
    for name, scene in scenes.items():
        mask = await mask_of(client, tasks[name])
        assert mask.shape == (240, 320)
        twin = detect_array(to_uint8(scene.intensity).astype(np.float32), DetectorOptions())
        assert iou(mask, twin) >= 0.9, name
        assert iou(mask, scene.truth) >= 0.7, name


async def test_overlay_size_and_colours(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings.with_changes(overlay_max_px=128)))
    scene = make_scene(384, 256, seed=21, lookalikes=0, ships=0)
    _, _, tasks = await scene_tasks(client, {"a.png": encode(to_uint8(scene.intensity), "PNG")})
    task = tasks["a.png"]
    resp = await client.get(task["result"]["overlay_url"])
    assert resp.status == 200 and resp.content_type == "image/png"
    overlay = Image.open(io.BytesIO(await resp.read()))
    assert overlay.size[0] == 128 and overlay.size[1] in (85, 86)
    pixels = np.asarray(overlay.convert("RGB")).astype(int)
    mask = await mask_of(client, task)
    small = np.asarray(Image.fromarray(mask).resize(overlay.size, Image.Resampling.NEAREST))
    # Each slick's outline and id are drawn in blue, so the picture matches the GeoJSON.
    outline = (pixels == OUTLINE_RGB).all(axis=2)
    # Outline, label boxes and their (smoothed) white text: bluish or white pixels.
    drawn = outline | (pixels[..., 2] > pixels[..., 0]) | (pixels == LABEL_RGB).all(axis=2)
    assert outline.any() and drawn.mean() < 0.2
    oil, sea = pixels[small & ~drawn], pixels[~small & ~drawn]
    # Oil is tinted orange (red > green > blue); the sea stays grey (R = G = B).
    assert (oil[:, 0] > oil[:, 1]).all() and (oil[:, 1] > oil[:, 2]).all()
    assert (sea[:, 0] == sea[:, 1]).all() and (sea[:, 1] == sea[:, 2]).all()


async def test_the_result_zip_summary_matches_its_masks(client):
    files = {f"sea/{i}.png": encode(to_uint8(make_scene(200, 160, seed=40 + i).intensity),
                                    "PNG") for i in range(3)}
    body, _, tasks = await scene_tasks(client, files)
    url = (await (await client.get(f"/api/archive/{body['job_id']}")).json())["archive_url"]
    with zipfile.ZipFile(io.BytesIO(await (await client.get(url)).read())) as zf:
        names = set(zf.namelist())
        assert "README.txt" in names and "overlays/" in zf.read("README.txt").decode()
        rows = json.loads(zf.read("summary.json"))
        for row in rows:
            mask = np.asarray(Image.open(io.BytesIO(zf.read(row["result"])))) >= 128
            labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
            sizes = np.bincount(labels.ravel())[1:]
            assert row["oil_pixels"] == int(mask.sum())
            assert row["oil_fraction"] == pytest.approx(mask.mean())
            assert row["slick_count"] == count >= 1
            assert row["largest_slick_px"] == int(sizes.max())
            assert row["overlay"] in names
            task = tasks[row["filename"]]["result"]
            assert (task["slick_count"], task["largest_slick_px"]) == (
                row["slick_count"], row["largest_slick_px"])
