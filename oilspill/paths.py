"""Every file and folder name: one folder per job under the data directory, nothing elsewhere.

A file being written carries a partial name until it is complete and renamed into place;
`PARTIAL_GLOBS` lists those names, and the start-up sweep removes what a crash left.
"""

from __future__ import annotations

import functools
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from .jobs import ResultKind

ARCHIVE_PREFIX = "oilspill-results-"
PARTIAL_SUFFIX = ".part"
# Partial files that a crashed process may leave, relative to the jobs folder: the upload
# and the result zip in a job's folder, and hidden ones in its result folders.
PARTIAL_GLOBS = (f"*/*{PARTIAL_SUFFIX}", f"*/.*{PARTIAL_SUFFIX}", f"*/masks/.*{PARTIAL_SUFFIX}",
                 f"*/results/.*{PARTIAL_SUFFIX}", f"*/overlays/.*{PARTIAL_SUFFIX}",
                 f"*/spills/.*{PARTIAL_SUFFIX}", f"*/scenes/*/.*{PARTIAL_SUFFIX}")
_ARCHIVE_NAME = re.compile(r"^oilspill-results-([0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-"
                           r"[89ab][0-9a-f]{3}-[0-9a-f]{12})((?:-[a-z]+)*)\.zip$")
# What a result zip can hold, in the order a partial zip's name lists them.
ARCHIVE_PARTS = ("summary", "spills", "masks", "overlays")


def partial_beside(path: Path, role: str = "") -> Path:
    """A fresh hidden name beside `path` for it while it is written, to rename into place;
    `role` tells two partial files of one result apart."""
    middle = f"{role}.{uuid.uuid4().hex}" if role else uuid.uuid4().hex
    return path.with_name(f".{path.name}.{middle}{PARTIAL_SUFFIX}")


def uploads_dir(data_dir: Path) -> Path:
    """The folder of resumable (tus) uploads, beside the jobs folder: one folder per upload."""
    return data_dir / "uploads"


def new_id() -> str:
    """A random UUID4 string, for jobs and tasks."""
    return str(uuid.uuid4())


def new_user_hash() -> str:
    """A job's second handle, for the original front end's routes: 128 random bits as 32
    hex digits. Never derived from the job id, so knowing one does not give the other."""
    return secrets.token_hex(16)


_USER_HASH = re.compile(r"^[0-9a-f]{32}$")


def is_user_hash(value: str) -> bool:
    """True for the form `new_user_hash` hands out (no dot: never a result zip's name)."""
    return _USER_HASH.match(value) is not None


def is_id(value: str) -> bool:
    """True when value is a UUID in the canonical lower-case form this service hands out."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError, TypeError):
        return False


def stored_image_name(seq: int, extension: str) -> str:
    """The safe name of an upload's `seq`-th image in the images folder (extension no dot)."""
    return f"{seq:06d}.{extension}"


def calibration_name(stored_name: str) -> str:
    """The name of a Sentinel-1 measurement's calibration table, beside it in images/."""
    return f"{stored_name}.calibration.xml"


def result_name(seq: int, extension: str) -> str:
    """The name of a done task's result in masks/ or results/ (extension with its dot)."""
    return f"{seq:06d}{extension}"


def archive_name(job_id: str, parts: frozenset[str] = frozenset(ARCHIVE_PARTS)) -> str:
    """The result zip's name: the whole one, or one holding only `parts` (its name lists
    them, so each choice is its own file)."""
    if parts >= set(ARCHIVE_PARTS):
        return f"{ARCHIVE_PREFIX}{job_id}.zip"
    return f"{ARCHIVE_PREFIX}{job_id}-{'-'.join(p for p in ARCHIVE_PARTS if p in parts)}.zip"


def job_id_of_archive(name: str) -> str | None:
    """The job id inside a result zip's name, or None if the server never makes that name."""
    match = _ARCHIVE_NAME.match(name)
    if match is None:
        return None
    named = match.group(2).split("-")[1:]
    # Only the names archive_name makes: known parts, in order, not all of them.
    if named and (archive_name(match.group(1), frozenset(named)) != name):
        return None
    return match.group(1)


@dataclass(frozen=True)
class JobPaths:
    """The files of one job, all under `<jobs_dir>/<job_id>/`."""

    jobs_dir: Path
    job_id: str

    @functools.cached_property
    def root(self) -> Path:
        return self.jobs_dir / self.job_id

    @property
    def upload(self) -> Path:
        """The upload as received: a zip, or one image."""
        return self.root / "upload"

    @property
    def upload_part(self) -> Path:
        """The upload while it is still arriving."""
        return self.root / f"upload{PARTIAL_SUFFIX}"

    @property
    def result_folders(self) -> tuple[Path, ...]:
        """The folders a worker writes into, made with the job."""
        return self.masks, self.results, self.overlays, self.scenes, self.spills_dir

    @property
    def spills_dir(self) -> Path:
        """Each done mask's slicks as GeoJSON, by task seq."""
        return self.root / "spills"

    def spills(self, seq: int) -> Path:
        return self.spills_dir / f"{seq:06d}.geojson"

    @property
    def job_spills(self) -> Path:
        """The job's GeoJSON: every image's slicks, built once."""
        return self.root / "spills.geojson"

    @property
    def scenes(self) -> Path:
        """Working files of the scenes being tiled, one folder per task (by seq)."""
        return self.root / "scenes"

    def scene_work(self, seq: int) -> Path:
        """A scene task's working folder: its survey and tile masks, removed once stitched."""
        return self.scenes / f"{seq:06d}"

    def survey(self, seq: int) -> Path:
        return self.scene_work(seq) / "survey.npz"

    def scene_draft(self, seq: int) -> Path:
        """The stitched mask while a scene's tiles arrive (each tile's core written as the
        tile is done); rebuilt by a process that did not write it."""
        return self.scene_work(seq) / "mask-draft.tif"

    def tile_confidence(self, seq: int, idx: int) -> Path:
        """A scene tile's confidence records (geo/confidence.py), when its mask keeps one."""
        return self.scene_work(seq) / f"{idx:06d}.conf"

    def overview_grey(self, seq: int) -> Path:
        """The scene brought down to one tile as it was sent: the quick-look's picture."""
        return self.scene_work(seq) / "overview.png"

    def tile_mask(self, seq: int, idx: int) -> Path:
        """The ML service's mask of one unit (tile or overview) of a scene."""
        return self.scene_work(seq) / f"{idx:06d}.png"

    def scene_partial(self, seq: int, name: str) -> Path:
        """A file of a scene's working folder while it is written."""
        return partial_beside(self.scene_work(seq) / name)

    def mask_partial(self, result_name: str) -> Path:
        """A stitched mask while it is written (in masks/, renamed from there)."""
        return partial_beside(self.masks / result_name)

    def picture_scene(self, stored_name: str) -> Path:
        """A PNG or JPEG larger than a tile, copied to a tiled GeoTIFF to be read by windows."""
        return self.images / f"{stored_name}.scene.tif"

    def calibration(self, stored_name: str) -> Path:
        """A Sentinel-1 measurement's calibration table, kept beside it."""
        return self.images / calibration_name(stored_name)

    @functools.cached_property
    def images(self) -> Path:
        return self.root / "images"

    @functools.cached_property
    def masks(self) -> Path:
        return self.root / "masks"

    @functools.cached_property
    def results(self) -> Path:
        """Pictures from an ML service that answers with images that are not masks."""
        return self.root / "results"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    def overlay(self, result_name: str) -> Path:
        """The overlay drawn for a mask: a PNG of the same stem, in overlays/."""
        return self.overlays / f"{Path(result_name).stem}.png"

    def overlay_partial(self, result_name: str) -> Path:
        """A fresh name for an overlay being drawn (two requests may draw it at once)."""
        return partial_beside(self.overlay(result_name))

    def answer_partial(self, task_id: str) -> Path:
        """The ML service's answer for a task while it arrives (in masks/, renamed from there)."""
        return self.masks / f".{task_id}{PARTIAL_SUFFIX}"

    @property
    def archive(self) -> Path:
        return self.root / archive_name(self.job_id)

    def archive_of(self, parts: frozenset[str]) -> Path:
        return self.root / archive_name(self.job_id, parts)

    @property
    def archive_partial(self) -> Path:
        return self.root / f"{archive_name(self.job_id)}{PARTIAL_SUFFIX}"

    def image(self, stored_name: str) -> Path:
        return self.images / stored_name

    def result(self, kind: ResultKind, result_name: str) -> Path:
        """A done task's stored answer: a mask, or another picture the ML service sent."""
        return (self.masks if kind is ResultKind.MASK else self.results) / result_name


@dataclass(frozen=True)
class UploadPaths:
    """The files of one resumable upload, all under `<uploads_dir>/<upload_id>/`.

    A folder whose name is not an upload id is a partial one (being made when the process
    stopped) and is removed at start-up.
    """

    uploads_dir: Path
    upload_id: str

    @property
    def root(self) -> Path:
        return self.uploads_dir / self.upload_id

    def root_partial(self) -> Path:
        """A fresh name for the upload's folder while it is made, renamed into place."""
        return partial_beside(self.root)

    @property
    def data(self) -> Path:
        """The bytes received so far, in order; renamed into a job's folder when complete."""
        return self.root / "data"

    @property
    def state(self) -> Path:
        """What the upload is (length, name, metadata) and, once finished, its outcome."""
        return self.root / "state.json"

    def state_partial(self) -> Path:
        """A fresh name for `state.json` while it is rewritten."""
        return partial_beside(self.state)
