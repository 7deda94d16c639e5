"""The web page in a real browser: headless Chromium (Debian's chromium and chromium-driver)
driven by Selenium, against a real server and ML stub on loopback."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from ml_stub.scenes import write_zip

from .procs import live_stack
from .test_openapi import write_scene

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
SCREENSHOT = os.environ.get("OILSPILL_SCREENSHOT")  # set to keep a picture of the page
TOKEN = "field-station-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Small tiles: a 700 x 500 scene is 3 x 3 tiles and an overview.
    with live_stack(tmp_path_factory.mktemp("browser"), ("--latency-ms", "150"),
                    OILSPILL_API_TOKEN=TOKEN, OILSPILL_CONCURRENCY="2",
                    OILSPILL_TILE_PX="256", OILSPILL_TILE_OVERLAP_PX="32") as base:
        yield base


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER or "/usr/bin/chromedriver"),
                              options=options)
    driver.downloads = downloads  # type: ignore[attr-defined]
    yield driver
    driver.quit()


def api(base: str, path: str) -> dict:
    request = urllib.request.Request(f"{base}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def fixed(value: float, places: int) -> str:
    """JavaScript's value.toFixed(places): the double's exact value, halves away from 0."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP))


def lat_lon_text(lat: float, lon: float) -> str:
    """The page's centroid: 4 decimals and hemisphere letters."""
    def part(value: float, positive: str, negative: str) -> str:
        digits = fixed(abs(value), 4)
        return f"{digits}\u00b0 {negative if value < 0 and Decimal(digits) else positive}"
    return f"{part(lat, 'N', 'S')}, {part(lon, 'E', 'W')}"


def write_slicks_scene(path: Path, width: int = 720, height: int = 520) -> Path:
    """A uint16 GeoTIFF of speckled sea in UTM 33N at 10 m (3 x 3 tiles of 256 px with
    overlap) with three dark bands of different sizes across it: three known slicks."""
    rng = np.random.default_rng(11)
    data = np.clip(rng.gamma(4.0, 400.0, (height, width)), 1, 65535).astype(np.uint16)
    for top, bottom, left, right in ((80, 112, 40, 680), (280, 300, 150, 520),
                                     (420, 436, 430, 690)):
        data[top:bottom, left:right] //= 12
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint16", crs="EPSG:32633",
                       transform=Affine(10, 0, 500_000, 0, -10, 6_000_000)) as dst:
        dst.write(np.maximum(data, 1), 1)
    return path


def slicks_loaded(figure) -> bool:
    return figure.get_attribute("data-filename") is not None and bool(
        figure.find_element("css selector", ".slicks").get_attribute("data-count"))


def wait_for(condition, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "the page never got there"
        time.sleep(0.1)


def test_upload_follow_gallery_and_download(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    images = tmp_path / "scenes.zip"
    write_zip(images, 6, (256, 256), seed=40, tiff_every=3)
    browser.get(server + "/")
    assert browser.title == "oilspill"
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(images))

    figures = wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure"))
                       == 6 and browser.find_elements(By.CSS_SELECTOR, "#gallery figure"))
    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled())
    job_id = browser.find_element(By.ID, "job-id").text
    job = api(server, f"/api/job/{job_id}")
    assert (job["done"], job["total"]) == (6, 6)
    assert "6 of 6 images" in browser.find_element(By.ID, "job-bar").text

    shown = {f.get_attribute("data-filename"):
             float(f.find_element(By.CSS_SELECTOR, ".fraction").get_attribute("data-fraction"))
             for f in figures}
    tasks = api(server, f"/api/job/{job_id}/tasks")["tasks"]
    assert shown == {t["filename"]: t["result"]["oil_fraction"] for t in tasks}
    for figure in figures:  # every overlay arrives and decodes once in view (with the token)
        browser.execute_script("arguments[0].scrollIntoView();", figure)
        wait_for(lambda f=figure: browser.execute_script(
            "const i = arguments[0].querySelector('img');"
            "return i.complete && i.naturalWidth > 0;", f))
        text = figure.find_element(By.CSS_SELECTOR, ".fraction").text
        name = figure.get_attribute("data-filename")
        assert text == f"{shown[name] * 100:.2f}% oil"
        # No georeference (PNGs, TIFFs without a CRS): slicks and pixels, no km², no place.
        wait_for(lambda f=figure: slicks_loaded(f))
        slicks = figure.find_element(By.CSS_SELECTOR, ".slicks")
        (task,) = [t for t in tasks if t["filename"] == name]
        collection = api(server, task["result"]["spills_url"])
        assert slicks.get_attribute("data-coordinates") == "pixel"
        assert int(slicks.get_attribute("data-count")) == len(collection["features"])
        assert not figure.find_elements(By.CSS_SELECTOR, ".slicks .centroid, .slicks .area")
        assert [(r.find_element(By.CSS_SELECTOR, ".id").text,
                 r.find_element(By.CSS_SELECTOR, ".pixels").text)
                for r in slicks.find_elements(By.CSS_SELECTOR, "tbody tr")] == [
            (str(f["properties"]["slick_id"]), f"{f['properties']['pixels']:,}")
            for f in collection["features"]]
    oil = browser.find_element(By.ID, "job-oil")
    assert "km\u00b2" not in oil.text and "without georeference" in oil.text
    assert oil.get_attribute("data-km2") == ""

    if SCREENSHOT:
        browser.save_screenshot(SCREENSHOT)
    browser.find_element(By.ID, "download").click()
    (zipped,) = wait_for(lambda: [p for p in browser.downloads.glob("*.zip")])
    with zipfile.ZipFile(zipped) as zf:
        assert len([n for n in zf.namelist() if n.startswith("overlays/")]) == 6


def test_a_wrong_token_is_reported_on_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    images = tmp_path / "one.zip"
    write_zip(images, 1, (64, 64), seed=3)
    browser.get(server + "/")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "file").send_keys(str(images))
    message = wait_for(lambda: browser.find_element(By.ID, "message").text)
    assert "401" in message


def test_overlays_are_fetched_only_near_the_screen(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    images = tmp_path / "many.zip"
    write_zip(images, 24, (96, 96), seed=60)
    browser.set_window_size(800, 600)
    browser.get(server + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(images))
    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled())
    time.sleep(1)  # let any eager fetch happen, to be sure none does

    def loaded() -> int:
        return browser.execute_script(
            "return [...document.querySelectorAll('#gallery img')]"
            ".filter(i => i.complete && i.naturalWidth > 0).length;")

    def tables() -> int:  # the slicks' GeoJSON is fetched near the screen too
        return browser.execute_script(
            "return document.querySelectorAll('#gallery .slicks[data-count]').length;")

    before, tables_before = loaded(), tables()
    assert 0 < before < 24 and tables_before < 24
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight);")
    wait_for(lambda: loaded() > before and tables() > tables_before)
    time.sleep(0.5)
    assert tables() < 24  # the rows passed over in the jump were never near the screen


# Every value the job bar takes, recorded in the page as it changes (no polling to miss one).
RECORD_BAR = """
window.barSeen = [];
new MutationObserver(() => {
  const bar = document.getElementById("job-bar");
  window.barSeen.push([bar.getAttribute("aria-valuenow"), bar.getAttribute("aria-valuemax"),
                       bar.querySelector("div").style.width, bar.textContent]);
}).observe(document.getElementById("job-bar"), {attributes: true, subtree: true,
                                                characterData: true, childList: true});
"""


def test_a_scene_moves_the_bar_tile_by_tile(server, browser, tmp_path):
    """A bare GeoTIFF is one image but ten units of work (nine tiles and an overview): the
    bar counts the tiles as they come back, and the card tells the scene's size, CRS and
    tiles."""
    from selenium.webdriver.common.by import By

    scene = write_scene(tmp_path / "sentinel_like.tif")
    browser.get(server + "/")
    accept = browser.find_element(By.ID, "file").get_attribute("accept").split(",")
    assert {".zip", ".tif", ".tiff", ".png", ".jpg", "image/tiff"} <= set(accept)
    assert "GeoTIFF" in browser.find_element(By.ID, "drop").text
    browser.execute_script(RECORD_BAR)
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(scene))

    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled())
    job = api(server, f"/api/job/{browser.find_element(By.ID, 'job-id').text}")
    assert (job["total"], job["done"], job["tiles_total"], job["tiles_done"]) == (1, 1, 10, 10)
    bar = browser.find_element(By.ID, "job-bar")
    assert bar.text == "1 of 1 images (1 done, 0 failed) · 10 of 10 tiles"
    assert (bar.get_attribute("aria-valuenow"), bar.get_attribute("aria-valuemax")) == (
        "10", "10")
    assert browser.execute_script(
        "return document.querySelector('#job-bar div').style.width") == "100%"

    seen = browser.execute_script("return window.barSeen")
    partial = [s for s in seen if s[1] == "10" and s[0] not in (None, "0", "10")]
    assert partial, seen  # the bar moved while the one image was still running
    for done, _, width, text in partial:
        assert width == f"{round(int(done) * 10)}%"
        assert text.startswith("0 of 1 images (0 done, 0 failed)")
        assert f"· {done} of 10 tiles" in text

    figure = browser.find_element(By.CSS_SELECTOR, "#gallery figure")
    assert figure.get_attribute("data-filename") == "sentinel_like.tif"
    facts = figure.find_element(By.CSS_SELECTOR, ".scene")
    assert (facts.get_attribute("data-width"), facts.get_attribute("data-height"),
            facts.get_attribute("data-crs"), facts.get_attribute("data-tiles")) == (
        "700", "500", "EPSG:32633", "9")
    assert [facts.find_element(By.CSS_SELECTOR, f".{part}").text
            for part in ("size", "crs", "tiles")] == ["700 \u00d7 500 px", "EPSG:32633",
                                                       "9 tiles"]
    browser.execute_script("arguments[0].scrollIntoView();", figure)
    wait_for(lambda: browser.execute_script(  # the quick-look arrives and decodes
        "const i = arguments[0].querySelector('img');"
        "return i.complete && i.naturalWidth > 0;", figure))
    if SCREENSHOT:
        browser.save_screenshot(str(Path(SCREENSHOT).with_suffix(".scene.png")))


def test_a_scenes_slicks_are_tabled_copied_and_downloaded(server, browser, tmp_path):
    """A georeferenced scene with three slicks: its card's table shows the API's GeoJSON
    (ids, km², length, centroid), a centroid is copied on a click, the job header sums the
    km², and the GeoJSON link downloads every slick of the job."""
    from selenium.webdriver.common.by import By

    scene = write_slicks_scene(tmp_path / "baltic.tif")
    browser.get(server + "/")
    assert not browser.find_element(By.ID, "geojson").is_displayed()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(scene))
    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled())
    job_id = browser.find_element(By.ID, "job-id").text
    (task,) = api(server, f"/api/job/{job_id}/tasks")["tasks"]
    assert task["tiles_total"] > 2  # cut into tiles
    collection = api(server, task["result"]["spills_url"])
    props = [f["properties"] for f in collection["features"]]
    assert [p["slick_id"] for p in props] == [1, 2, 3]  # the three bands

    figure = browser.find_element(By.CSS_SELECTOR, "#gallery figure")
    browser.execute_script("arguments[0].scrollIntoView();", figure)
    wait_for(lambda: slicks_loaded(figure))
    slicks = figure.find_element(By.CSS_SELECTOR, ".slicks")
    assert slicks.get_attribute("data-coordinates") == "lonlat"
    rows = [[r.find_element(By.CSS_SELECTOR, f".{c}").text
             for c in ("id", "area", "length", "centroid")]
            for r in slicks.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert rows == [[str(p["slick_id"]), fixed(p["area_km2"], 2), fixed(p["length_km"], 1),
                     lat_lon_text(p["centroid_lat"], p["centroid_lon"])] for p in props]
    assert all(" N, " in r[3] and r[3].endswith(" E") for r in rows)  # the Baltic

    total = sum(p["area_km2"] for p in props)
    oil = browser.find_element(By.ID, "job-oil")
    assert float(oil.get_attribute("data-km2")) == pytest.approx(total, abs=1e-5)
    assert oil.text.startswith(f"{fixed(total, 2)} km\u00b2 of oil in 3 slicks")
    assert task["result"]["total_area_km2"] == pytest.approx(total, abs=1e-5)

    # A click on a centroid copies it: with the clipboard API, and the old way without.
    browser.execute_script(
        "window.copies = [];"
        "navigator.clipboard.writeText = (t) => { window.copies.push(['api', t]);"
        "  return Promise.resolve(); };")
    first = slicks.find_element(By.CSS_SELECTOR, "tbody tr .centroid button")
    first.click()
    wait_for(lambda: figure.find_elements(By.CSS_SELECTOR, ".slicks .note"))
    assert figure.find_element(By.CSS_SELECTOR, ".slicks .note").text == "copied"
    assert browser.execute_script("return window.copies") == [["api", rows[0][3]]]
    browser.execute_script(
        "navigator.clipboard.writeText = () => Promise.reject(new Error('denied'));"
        "document.execCommand = (command) => { window.copies.push([command,"
        "  document.activeElement.value]); return true; };")
    slicks.find_elements(By.CSS_SELECTOR, "tbody tr .centroid button")[2].click()
    wait_for(lambda: len(browser.execute_script("return window.copies")) == 2)
    assert browser.execute_script("return window.copies")[1] == ["copy", rows[2][3]]

    link = browser.find_element(By.ID, "geojson")
    assert link.is_displayed() and link.text == "GeoJSON"
    assert link.get_attribute("href") == f"{server}/api/job/{job_id}/spills.geojson"
    link.click()
    (saved,) = wait_for(lambda: list(browser.downloads.glob("*.geojson")))
    downloaded = json.loads(saved.read_text())
    assert saved.name == f"oilspill-spills-{job_id}.geojson"
    assert downloaded["type"] == "FeatureCollection"
    assert downloaded == api(server, f"/api/job/{job_id}/spills.geojson") == collection
    if SCREENSHOT:
        browser.save_screenshot(str(Path(SCREENSHOT).with_suffix(".slicks.png")))
