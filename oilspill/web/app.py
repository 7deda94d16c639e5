"""`create_app(settings)`: the aiohttp application with its resources wired in order.

Each resource is one `cleanup_ctx` generator, set up before its `yield` and torn down after
it, in reverse order: the event-loop lag monitor, the data dir, the database (with crash
recovery and the result builder), the HTTP session and the ML tier (every endpoint of
ML_SERVICE_URL), the worker pool, the cleanup scheduler. No raster, geometry or scipy
library is loaded at start (see masks.load_labelling and worker._open_scene). Process-wide
settings (Pillow's pixel guard, warning filters) are set here too, so tests, the demo and
`oilspill serve` run alike.
"""

from __future__ import annotations

import asyncio
import logging
import random
import warnings
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from PIL import Image

from ..cleanup import Cleanup, recover_files
from ..config import SceneSettings, Settings
from ..jobs import RetryPolicy
from ..looplag import LoopLagMonitor
from ..metrics import Metrics
from ..ml_tier import MLTier
from ..outage import OutageGate
from ..results import ResultArchives
from ..store import Store
from ..worker import WorkerPool
from . import api, events, keys, original, page, tus
from .feeds import Feeds
from .middlewares import (
    auth_middleware,
    cors_middleware,
    error_middleware,
    metrics_middleware,
)

logger = logging.getLogger(__name__)


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    monitor = LoopLagMonitor()
    app[keys.LOOP_LAG] = monitor
    monitor.start()
    yield
    await monitor.stop()


async def _data_dir(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    await asyncio.to_thread(settings.jobs_dir.mkdir, parents=True, exist_ok=True)
    yield


async def _store(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    store = await Store.open(settings.db_path)
    # Any task still `running` was claimed by a process that is gone: run it again.
    requeued = await store.requeue_running()
    if requeued:
        logger.warning("start-up: %d tasks left running by a previous process re-queued",
                       requeued)
    await recover_files(store, settings.jobs_dir)
    app[keys.STORE] = store
    app[keys.ARCHIVES] = ResultArchives(store, settings.jobs_dir, settings.overlay_max_px,
                                        max_slicks=settings.max_slicks)
    yield
    await store.close()


async def _ml_client(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    connector = aiohttp.TCPConnector(limit=MLTier.connections_for(settings))
    async with aiohttp.ClientSession(connector=connector) as session:
        tier = MLTier.from_settings(session, settings, app[keys.METRICS])
        app[keys.ML_CLIENT] = tier
        tier.start()
        logger.info("ML tier: %d endpoint(s), %s; up to %d calls at once",
                    len(tier.endpoints), ", ".join(
                        f"{e.url} ({e.protocol.value}, limit {e.limit})" for e in tier.endpoints),
                    tier.capacity)
        yield
        await tier.close()


async def _worker_pool(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    ml = app[keys.ML_CLIENT]
    gate = OutageGate(ml.healthy, trip_after=settings.ml_pause_after)
    # Every endpoint down pauses the pool; the first one back (its own probe) resumes it.
    ml.on_endpoint_back(gate.reopen)
    pool = WorkerPool(
        store=app[keys.STORE], ml=ml, jobs_dir=settings.jobs_dir,
        # The calls the endpoints can hold at once (each limit; times the batch for OIP).
        concurrency=ml.capacity,
        policy=RetryPolicy(max_attempts=settings.ml_max_attempts,
                           base_delay_s=settings.ml_retry_base_s,
                           max_delay_s=settings.ml_retry_max_s),
        gate=gate,
        metrics=app[keys.METRICS],
        max_image_pixels=settings.max_image_pixels,
        scene_settings=SceneSettings.of(settings),
        rng=random.Random())
    app[keys.POOL] = pool
    app[keys.FEEDS] = Feeds(app[keys.STORE], pool, app[keys.DRAINING])
    pool.start()
    await pool.notify()
    yield
    await pool.stop(settings.shutdown_grace_s)


async def _cleanup(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    cleanup = Cleanup(
        store=app[keys.STORE], pool=app[keys.POOL], jobs_dir=settings.jobs_dir,
        retention_s=settings.retention_s,
        orphan_age_s=settings.orphan_age_s, tombstone_s=settings.tombstone_s,
        active_uploads=app[keys.ACTIVE_UPLOADS], metrics=app[keys.METRICS],
        resumable=app[keys.RESUMABLE])
    app[keys.CLEANUP] = cleanup
    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
    scheduler.add_job(cleanup.run_once, "interval", seconds=settings.cleanup_interval_s,
                      id="retention", coalesce=True, max_instances=1)
    scheduler.start()
    yield
    scheduler.shutdown(wait=False)
    async with cleanup.running:  # let a run in progress finish before the store closes
        pass


async def _start_draining(app: web.Application) -> None:
    app[keys.DRAINING].set()
    logger.info("shutting down: uploads refused from now on")


def create_app(settings: Settings) -> web.Application:
    """The oilspill web application for these settings."""
    # Pillow's decompression-bomb guard is process-wide: match it to our own limit.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    # Tile masks and plain pictures have no georeference, and that is not news: said once
    # here, as warning filters are process-wide and not safe to change from threads. By its
    # text (rasterio's NotGeoreferencedWarning): naming the class would load GDAL at start.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform, gcps, or rpcs")
    # Outermost first: CORS headers go on every answer, errors included; the token check
    # raises an ApiError that the error middleware renders.
    app = web.Application(middlewares=[metrics_middleware, cors_middleware, error_middleware,
                                       auth_middleware])
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = Metrics()
    app[keys.DRAINING] = asyncio.Event()
    app[keys.ACTIVE_UPLOADS] = set()
    app.cleanup_ctx.append(_loop_lag)
    app.cleanup_ctx.append(_data_dir)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(tus.resumable_uploads)
    app.cleanup_ctx.append(_ml_client)
    app.cleanup_ctx.append(_worker_pool)
    app.cleanup_ctx.append(_cleanup)
    app.on_shutdown.append(_start_draining)
    _routes(app)
    return app


def _routes(app: web.Application) -> None:
    app.router.add_get("/", page.index)
    app.router.add_get("/static/{name}", page.static_file)
    app.router.add_get("/api/job/{job_id}/events", events.job_events)
    app.router.add_get("/api/job/{job_id}/tasks", api.list_job_tasks)
    app.router.add_get("/api/job/{job_id}/skipped", api.list_job_skipped)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_post("/api/upload/", api.upload)
    app.router.add_post("/api/upload", api.upload)
    app.router.add_get("/api/task/{task_id}", api.get_task)
    app.router.add_get("/api/task/{task_id}/mask", api.get_mask)
    app.router.add_get("/api/task/{task_id}/picture", api.get_picture)
    app.router.add_get("/api/task/{task_id}/overlay", api.get_overlay)
    app.router.add_get("/api/task/{task_id}/spills.geojson", api.get_task_spills)
    app.router.add_get("/api/job/{job_id}/spills.geojson", api.get_job_spills)
    app.router.add_get("/api/job/{job_id}", api.get_job)
    app.router.add_delete("/api/job/{job_id}", api.delete_job)
    app.router.add_get("/api/archive/{job_id}", api.get_archive)
    app.router.add_get("/api/download/{filename}", api.download)
    app.router.add_get("/api/status/{job_id}", original.job_status)
    app.router.add_get("/api/archive_time_left/{user_hash}", original.archive_time_left)
    app.router.add_get("/api/openapi.json", api.openapi_document)
    app.router.add_get("/healthz", api.healthz)
    tus.add_routes(app)
