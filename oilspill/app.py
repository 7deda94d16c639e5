"""`create_app(settings)`: the aiohttp application with its resources wired in order.

Each resource is one `cleanup_ctx` generator: set up before its `yield`, torn down after,
in reverse order (data dir, database, HTTP session to the ML service, worker pool).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from . import keys
from .api import error_middleware, setup_routes
from .config import Settings
from .ml_client import MLClient
from .results import ResultArchives
from .store import Store
from .worker import WorkerPool

logger = logging.getLogger(__name__)


async def _data_dir(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    await asyncio.to_thread(settings.jobs_dir.mkdir, parents=True, exist_ok=True)
    yield


async def _store(app: web.Application) -> AsyncIterator[None]:
    store = await Store.open(app[keys.SETTINGS].db_path)
    # Any task still `running` was claimed by a process that is gone: run it again.
    requeued = await store.requeue_running()
    if requeued:
        logger.warning("recovered %d tasks left running by a previous process", requeued)
    app[keys.STORE] = store
    app[keys.ARCHIVES] = ResultArchives(store, app[keys.SETTINGS].jobs_dir)
    yield
    await store.close()


async def _ml_client(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    connector = aiohttp.TCPConnector(limit=settings.concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        app[keys.ML_CLIENT] = MLClient(
            session, settings.ml_service_url, timeout_s=settings.ml_timeout_s,
            connect_timeout_s=settings.ml_connect_timeout_s,
            max_response_bytes=settings.max_ml_response_bytes)
        yield


async def _worker_pool(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    pool = WorkerPool(app[keys.STORE], app[keys.ML_CLIENT], settings.jobs_dir,
                      settings.concurrency)
    app[keys.POOL] = pool
    pool.start()
    await pool.notify()
    yield
    await pool.stop()


def create_app(settings: Settings) -> web.Application:
    """The oilspill web application for these settings."""
    app = web.Application(middlewares=[error_middleware])
    app[keys.SETTINGS] = settings
    app.cleanup_ctx.append(_data_dir)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_ml_client)
    app.cleanup_ctx.append(_worker_pool)
    setup_routes(app)
    return app
