"""A scene's work: the units it is cut into, one unit's pixels on the scene-wide scale, its
mask kept, and the stitch that makes one mask, its statistics and its quick-look.

A scene (a TIFF/GeoTIFF/BigTIFF, or a Sentinel-1 product's measurement) becomes:
- tiles of OILSPILL_TILE_PX overlapping by OILSPILL_TILE_OVERLAP_PX, each sent to the ML
  service as an 8-bit PNG on one scale for the whole scene (dB, stretched between the
  scene's 1st and 99th percentiles), so every tile looks alike to the model;
- for a scene of more than one tile, an overview: the whole scene brought down to one tile,
  which finds slicks wider than a tile (see geo/stitch.py for how it is combined);
- a stitch, which runs once every other unit is done.

Blocking: the worker runs these in threads. Memory depends on one tile, never the scene.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.windows import Window

from .config import SceneSettings as SceneSettings
from .geo import GDAL_OPTIONS
from .geo.confidence import slick_confidence
from .geo.draft import Draft
from .geo.quicklook import render_quicklook
from .geo.safe import Calibration
from .geo.scale import Stretch, grey_png, to_grey
from .geo.scene import (
    SceneError,
    SceneInfo,
    SceneReader,
    SceneTooLarge,
    Survey,
    UnreadableScene,
    inspect_scene,
    overview_raw,
    survey_scene,
    to_values,
)
from .geo.stitch import Georef, add_cog_overviews, copy_cog, create_draft
from .geo.tiles import Tile, overview_shape, tile_grid
from .jobs import NewTile, ResultKind, Task, TaskOutcome, TileUnit, UnitKind
from .masks import UnreadableImage, is_mask
from .oip_client import kept_confidence
from .paths import JobPaths, partial_beside, result_name
from .spills import scene_spills

MASK_EXTENSION = ".tif"
_PICTURE_DRIVERS = ("PNG", "JPEG")


@dataclass(frozen=True)
class SceneContext:
    """What every unit of one scene needs: its header, survey, scale and calibration.

    grey_table: the grey of every raw value, for an uncalibrated 8- or 16-bit scene (a tile
    is then one lookup instead of a logarithm per pixel); None otherwise. draft: the
    stitched mask being built (the tiles' cores this process wrote, counted and traced as
    its rows become final). reader: the scene's open handles, closed by close().
    """

    path: Path
    info: SceneInfo
    survey: Survey
    stretch: Stretch
    calibration: Calibration | None
    grey_table: np.ndarray | None
    draft: Draft
    reader: SceneReader

    def close(self) -> None:
        """Close the scene's read handles and stop the draft's background tracing (the
        draft itself is the stitch's to close)."""
        self.reader.close()
        self.draft.stop()

    def grey(self, window: tuple[int, int, int, int] | Window,
             shape: tuple[int, int] | None = None) -> np.ndarray:
        """A window of the scene as 8-bit grey on its scale (resampled to shape (h, w)),
        invalid pixels at the sea's median grey."""
        grey, valid = self.grey_and_valid(window, shape)
        grey[~valid] = self.stretch.sea_grey
        return grey

    def grey_and_valid(self, window: tuple[int, int, int, int] | Window,
                       shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A window as 8-bit grey on the scene's scale, and its valid pixels."""
        raw, valid = self.reader.read_raw(window, self.survey, shape)
        return self._grey_of(raw, valid, window), valid

    def overview_grey_and_valid(self) -> tuple[np.ndarray, np.ndarray]:
        """The overview as 8-bit grey on the scene's scale, and its valid pixels: from the
        raw values its survey kept (the scene is not read again)."""
        raw, valid = overview_raw(self.info, self.survey)
        return self._grey_of(raw, valid, (0, 0, self.info.width, self.info.height)), valid

    def _grey_of(self, raw: np.ndarray, valid: np.ndarray,
                 window: tuple[int, int, int, int] | Window) -> np.ndarray:
        if self.grey_table is not None:
            return np.take(self.grey_table, raw)  # one lookup per pixel, the GIL released
        values = to_values(raw, self.info, window, self.calibration)
        return to_grey(values, valid, self.stretch)


def plan_units(path: Path, settings: SceneSettings) -> tuple[NewTile, ...]:
    """The units of a scene, from its header alone; raises geo.scene.SceneError."""
    info = inspect_scene(path, settings.band, settings.max_pixels)
    tiles = tile_grid(info.width, info.height, settings.tile_px, settings.overlap_px)
    whole = (0, 0, info.width, info.height)
    units = [NewTile(t.index, UnitKind.TILE, (t.col, t.row, t.width, t.height),
                     (t.core_col, t.core_row, t.core_width, t.core_height)) for t in tiles]
    if len(tiles) > 1:
        width, height = overview_shape(info.width, info.height, settings.tile_px)
        # The overview's core is its own size: the shape its mask comes back in.
        units.append(NewTile(len(units), UnitKind.OVERVIEW, whole, (0, 0, width, height)))
    units.append(NewTile(len(units), UnitKind.STITCH, whole, whole))
    return tuple(units)


def picture_as_scene(paths: JobPaths, stored_name: str, settings: SceneSettings
                     ) -> tuple[NewTile, ...]:
    """A PNG or JPEG larger than a tile becomes a scene: copied (streamed by GDAL, never
    decoded whole) to a tiled GeoTIFF, then cut like one. Empty for a picture that fits in a
    tile: it is sent whole, as it is. The upload calls it only for pictures whose header
    Pillow found larger than a tile or could not read (uploads._fits_one_tile); GDAL's
    header decides here. Raises geo.scene.SceneError."""
    source = paths.image(stored_name)
    try:
        width, height = _picture_size(source)
    except UnreadableScene:
        return ()  # sent whole then, and the worker says why it cannot be read
    if width <= settings.tile_px and height <= settings.tile_px:
        return ()
    if width * height > settings.max_pixels:
        raise SceneTooLarge(f"the picture is {width}x{height} = {width * height} pixels, over "
                            f"the limit of {settings.max_pixels} (OILSPILL_MAX_SCENE_PIXELS)")
    target = paths.picture_scene(stored_name)
    partial = partial_beside(target)
    try:
        with rasterio.Env(**GDAL_OPTIONS):
            rasterio.shutil.copy(source, partial, driver="GTiff", TILED="YES",
                                 BLOCKXSIZE=512, BLOCKYSIZE=512, BIGTIFF="IF_SAFER")
        os.replace(partial, target)
    except RasterioError:
        raise UnreadableScene("the picture's pixel data cannot be read") from None
    finally:
        partial.unlink(missing_ok=True)
    return plan_units(target, settings)


def _picture_size(source: Path) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG, from its header, by GDAL's own drivers only."""
    for driver in _PICTURE_DRIVERS:
        try:
            with rasterio.Env(**GDAL_OPTIONS), \
                    rasterio.open(source, driver=driver) as src:
                return int(src.width), int(src.height)
        except RasterioError:
            continue
    raise UnreadableScene("not a PNG or JPEG that GDAL can read")


def scene_image(paths: JobPaths, task: Task) -> Path:
    """The raster a scene task reads: the TIFF itself, or a big picture's GeoTIFF copy."""
    if task.content_type == "image/tiff":
        return paths.image(task.stored_name)
    return paths.picture_scene(task.stored_name)


def open_scene(paths: JobPaths, task: Task, settings: SceneSettings) -> SceneContext:
    """The scene's context; its survey (one pass over the scene) is made once and kept."""
    image = scene_image(paths, task)
    info = inspect_scene(image, settings.band, settings.max_pixels)
    calibration_xml = paths.calibration(task.stored_name)
    calibration = Calibration.from_xml(calibration_xml) if calibration_xml.is_file() else None
    survey_path = paths.survey(task.seq)
    overview = _overview_size(info, settings)
    try:
        survey = Survey.load(survey_path)
        kept = None if survey.overview is None else survey.overview.shape
        if kept != (None if overview is None else (overview[1], overview[0])):
            raise SceneError("the survey was made for another tile size")
    except (OSError, SceneError):
        survey = survey_scene(image, info, calibration, overview=overview)
        survey_path.parent.mkdir(parents=True, exist_ok=True)
        partial = paths.scene_partial(task.seq, survey_path.name)
        try:
            survey.save(partial)
            os.replace(partial, survey_path)
        finally:
            partial.unlink(missing_ok=True)
    stretch = Stretch.from_survey(survey)
    table = stretch.grey_table(info.dtype) if calibration is None else None
    # A draft left by another process holds unknown tiles: start it afresh.
    draft_path = paths.scene_draft(task.seq)
    create_draft(draft_path, info.width, info.height, _georef(info))
    draft = Draft(draft_path, info.width, info.height,
                  tile_grid(info.width, info.height, settings.tile_px, settings.overlap_px),
                  survey.valid_mask, overview=overview is not None,
                  large_px=max(1, settings.tile_px // 2), max_slicks=settings.max_slicks,
                  records=functools.partial(paths.tile_confidence, task.seq))
    return SceneContext(image, info, survey, stretch, calibration, table, draft,
                        SceneReader(image, info))


def _overview_size(info: SceneInfo, settings: SceneSettings) -> tuple[int, int] | None:
    """(width, height) of the scene's overview unit; None for a scene of one tile."""
    if info.width <= settings.tile_px and info.height <= settings.tile_px:
        return None
    return overview_shape(info.width, info.height, settings.tile_px)


def unit_shape(unit: TileUnit) -> tuple[int, int]:
    """(width, height) of the mask the ML service answers for a unit."""
    if unit.kind is UnitKind.OVERVIEW:
        return unit.core[2], unit.core[3]
    return unit.window[2], unit.window[3]


def read_unit(ctx: SceneContext, unit: TileUnit) -> bytes | None:
    """The unit's pixels as the PNG sent to the ML service; None when none is valid (a tile
    of border only: no call is needed, it holds no oil)."""
    width, height = unit_shape(unit)
    col, row, w, h = unit.window
    first, last = ctx.survey.row_first[row:row + h], ctx.survey.row_last[row:row + h]
    if ((last < col) | (first >= col + w) | (first > last)).all():
        return None  # no row's valid extent reaches into the window: border only
    if unit.kind is UnitKind.OVERVIEW and ctx.survey.overview is not None \
            and ctx.survey.overview.shape == (height, width):
        grey, valid = ctx.overview_grey_and_valid()
    else:
        grey, valid = ctx.grey_and_valid(unit.window, (height, width))
    if not valid.all():
        # Border pixels get the sea beside them, mirrored: a flat fill has no speckle, and
        # a model that measures the sea's texture would take the real sea beside it for
        # something darker and smoother (oil).
        grey = mirror_into_border(grey, valid)
    return grey_png(grey)


def mirror_into_border(grey: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The picture with each invalid pixel taken from the valid pixels mirrored across the
    nearest edge of its row's valid run (rows with none, from the nearest row that has)."""
    width = grey.shape[1]
    has = valid.any(axis=1)
    if not has.any():
        return grey
    rows = np.flatnonzero(has)
    # Whole rows as a slice when they follow each other (the usual case): views, not copies.
    picked = slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows
    first = valid[picked].argmax(axis=1).astype(np.int32)
    last = width - 1 - valid[picked, ::-1].argmax(axis=1).astype(np.int32)
    span = (last - first)[:, None]
    out = grey.copy()
    # Only the columns left of some row's run or right of some row's run change (inside a
    # run a pixel mirrors onto itself): a tile's border is a small part of it.
    for start, stop in ((0, int(first.max())), (int(last.min()) + 1, width)):
        if start >= stop:
            continue
        columns = np.arange(start, stop, dtype=np.int32)
        # Reflect about the run's edges (folding back and forth for a short run).
        offset = (columns[None, :] - first[:, None]) % np.maximum(2 * span, 1)
        source = first[:, None] + np.where(offset > span, 2 * span - offset, offset)
        mirrored = np.take_along_axis(grey[picked], source, axis=1)
        keep = valid[picked, start:stop]
        out[picked, start:stop] = np.where(keep, grey[picked, start:stop], mirrored)
    # A row without valid pixels copies the nearest row that has some (the upper on a tie).
    empty = np.flatnonzero(~has)
    if empty.size:
        after = np.minimum(np.searchsorted(rows, empty), len(rows) - 1)
        before = np.maximum(after - 1, 0)
        upper = np.abs(empty - rows[before]) <= np.abs(rows[after] - empty)
        out[empty] = out[np.where(upper, rows[before], rows[after])]
    return out


def keep_unit_mask(ctx: SceneContext, answer: bytes | Path | None, sent: bytes | None,
                   paths: JobPaths, unit: TileUnit) -> list[Path]:
    """Check the ML service's answer is a mask of the unit's size and keep it (written whole,
    then renamed); None means no call was made: an empty mask. A tile's core goes into the
    stitched mask's draft at once; the overview's picture is kept for the quick-look.
    Returns the files written (to make durable). Raises UnreadableImage."""
    width, height = unit_shape(unit)
    target = paths.tile_mask(unit.task.seq, unit.idx)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = paths.scene_partial(unit.task.seq, target.name)
    try:
        if answer is None:
            Image.new("L", (width, height), 0).save(partial, format="PNG")
        else:
            if not is_mask(answer, width, height):
                raise UnreadableImage(
                    f"the ML service did not answer a {width}x{height} 8-bit PNG mask: a "
                    "scene's tiles need masks to be stitched")
            if isinstance(answer, bytes):
                partial.write_bytes(answer)
            else:
                os.replace(answer, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        if isinstance(answer, Path):
            answer.unlink(missing_ok=True)
    if unit.kind is UnitKind.TILE:
        band = np.zeros((height, width), np.uint8) if answer is None else _decoded(
            answer if isinstance(answer, bytes) else target)
        text = None
        if answer is not None:
            text = kept_confidence(answer if isinstance(answer, bytes) else target.read_bytes())
        ctx.draft.write(Tile(unit.idx, *unit.window, *unit.core), band, text)
        return [target]
    ctx.draft.add_overview(target)
    if sent is None:
        return [target]
    picture = paths.overview_grey(unit.task.seq)
    partial = paths.scene_partial(unit.task.seq, picture.name)
    try:
        partial.write_bytes(sent)
        os.replace(partial, picture)
    finally:
        partial.unlink(missing_ok=True)
    return [target, picture]


def _decoded(mask: bytes | Path) -> np.ndarray:
    """The band of an 8-bit one-channel PNG (checked by masks.is_mask), decoded by GDAL's
    PNG driver (libpng: 1.5 ms for a 1024 x 1024 mask where Pillow takes 2.4). Raises
    UnreadableImage when its pixel data is corrupt or cut short."""
    # A mask has no georeference: create_app's process-wide filter keeps rasterio quiet
    # about it (warning filters are not safe to change from threads).
    try:
        with rasterio.Env(**GDAL_OPTIONS):
            if isinstance(mask, Path):
                with rasterio.open(mask, driver="PNG") as src:
                    return np.asarray(src.read(1), np.uint8)
            with MemoryFile(mask) as memory, memory.open(driver="PNG") as src:
                return np.asarray(src.read(1), np.uint8)
    except RasterioError:
        raise UnreadableImage("the ML service's mask cannot be decoded (its pixel data is "
                              "truncated or corrupt)") from None


def _georef(info: SceneInfo) -> Georef:
    return Georef(crs_wkt=info.crs_wkt, transform=info.transform, gcps=info.gcps,
                  gcps_crs_wkt=info.gcps_crs_wkt)


def _scene_summary(ctx: SceneContext, tiles: int) -> dict[str, Any]:
    info = ctx.info
    georeference = "gcps" if info.gcps else "affine" if info.transform and info.crs_wkt else None
    crs = info.gcps_crs_wkt if info.gcps else info.crs_wkt
    return {"georeference": georeference, "crs": _crs_name(crs), "band": info.band,
            "dtype": info.dtype, "calibrated": ctx.calibration is not None,
            "valid_pixels": ctx.survey.valid_pixels, "tiles": tiles,
            "scale": ctx.stretch.as_dict()}


def _crs_name(wkt: str | None) -> str | None:
    """"EPSG:n" when the CRS has an EPSG code, else its WKT."""
    if not wkt:
        return None
    epsg = CRS.from_user_input(wkt).to_epsg()
    return f"EPSG:{epsg}" if epsg else wkt


def finish_scene(ctx: SceneContext, paths: JobPaths, task: Task, units: list[TileUnit],
                 settings: SceneSettings) -> tuple[TaskOutcome, list[Path]]:
    """Stitch the units' masks into the scene's mask (a COG with its georeference), count
    its slicks over the valid area, draw its quick-look; returns the outcome and the files
    written (to make durable)."""
    tiles = [u for u in units if u.kind is UnitKind.TILE]
    overviews = [u for u in units if u.kind is UnitKind.OVERVIEW]
    if overviews and ctx.draft.awaiting_overview:  # done by another process (before a restart)
        ctx.draft.add_overview(paths.tile_mask(task.seq, overviews[0].idx))
    for unit in tiles:  # those another process did
        if unit.idx not in ctx.draft.written:
            mask = paths.tile_mask(task.seq, unit.idx)
            ctx.draft.write(Tile(unit.idx, *unit.window, *unit.core), mask,
                            kept_confidence(mask.read_bytes()))
    stats, slicks = ctx.draft.finish()
    records = [path for unit in tiles if (path := paths.tile_confidence(task.seq, unit.idx))
               .is_file()]
    confidence = slick_confidence(records, slicks)
    cog_name = result_name(task.seq, MASK_EXTENSION)
    cog = paths.result(ResultKind.MASK, cog_name)
    # A big picture (not a TIFF) keeps a PNG mask, as small ones do.
    name = cog_name if task.content_type == "image/tiff" else result_name(task.seq, ".png")
    mask = paths.result(ResultKind.MASK, name)
    add_cog_overviews(ctx.draft.path)
    overlay = paths.overlay(name)
    picture = paths.overview_grey(task.seq)
    reader = (_overview_reader(picture, ctx.info.width, ctx.info.height)
              if picture.is_file() and settings.overlay_max_px <= settings.tile_px else ctx.grey)
    spills = paths.spills(task.seq)
    # GDAL's threads compress the COG while this one draws the quick-look (from the draft:
    # the same pixels and overviews) and places the slicks: 1.5-1.9 s and 0.8 s at once.
    with ThreadPoolExecutor(1, thread_name_prefix="oilspill-cog") as pool:
        copied = pool.submit(copy_cog, ctx.draft.path, cog, paths.mask_partial(cog_name))
        try:
            render_quicklook(reader, ctx.draft.path, overlay, settings.overlay_max_px)
            figures = scene_spills(ctx.draft.path, _georef(ctx.info), ctx.info.width,
                                   ctx.info.height, task.filename, reader, ctx.stretch,
                                   spills, overlay, slicks, max_slicks=settings.max_slicks,
                                   confidence=confidence)
            copied.result()
        except BaseException:
            for path in (overlay, spills):  # no results beside a mask that failed
                path.unlink(missing_ok=True)
            raise
    if mask != cog:
        partial = paths.mask_partial(name)
        try:
            with rasterio.Env(**GDAL_OPTIONS):
                rasterio.shutil.copy(cog, partial, driver="PNG", ZLEVEL=6)
            os.replace(partial, mask)
        finally:
            partial.unlink(missing_ok=True)
    outcome = TaskOutcome(
        width=ctx.info.width, height=ctx.info.height, result_kind=ResultKind.MASK,
        result_name=name, oil_pixels=stats.oil_pixels, oil_fraction=stats.oil_fraction,
        slick_count=stats.slick_count, largest_slick_px=stats.largest_slick_px,
        scene={**_scene_summary(ctx, len(tiles)), **figures})
    return outcome, [mask, overlay, spills]


def _overview_reader(picture: Path, width: int, height: int
                     ) -> Callable[[Window, tuple[int, int]], np.ndarray]:
    """A scene reader from the overview's picture, for a quick-look no larger than it: the
    scene is not read a second time."""
    with Image.open(picture) as image:
        grey = np.asarray(image.convert("L"))
    small_h, small_w = grey.shape

    def read(window: Window, shape: tuple[int, int]) -> np.ndarray:
        rows = ((np.arange(shape[0]) + 0.5) * window.height / shape[0] + window.row_off)
        cols = ((np.arange(shape[1]) + 0.5) * window.width / shape[1] + window.col_off)
        r = np.minimum((rows * small_h / height).astype(np.intp), small_h - 1)
        c = np.minimum((cols * small_w / width).astype(np.intp), small_w - 1)
        return np.asarray(grey[r][:, c])
    return read


def drop_work(paths: JobPaths, seq: int) -> None:
    """Remove a finished scene's working folder (survey, tile masks)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(paths.scene_work(seq))
