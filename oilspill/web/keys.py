"""Typed keys for the resources that `create_app` puts on the application."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..cleanup import Cleanup
from ..config import Settings
from ..looplag import LoopLagMonitor
from ..metrics import Metrics
from ..ml_tier import MLTier
from ..results import ResultArchives
from ..resumable import ResumableUploads
from ..store import Store
from ..worker import WorkerPool
from .feeds import Feeds

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
ML_CLIENT = web.AppKey("ml_client", MLTier)
POOL = web.AppKey("pool", WorkerPool)
ARCHIVES = web.AppKey("archives", ResultArchives)
CLEANUP = web.AppKey("cleanup", Cleanup)
RESUMABLE = web.AppKey("resumable", ResumableUploads)
LOOP_LAG = web.AppKey("loop_lag", LoopLagMonitor)
METRICS = web.AppKey("metrics", Metrics)
FEEDS = web.AppKey("feeds", Feeds)
# Set when shutdown begins: uploads are refused from then on.
DRAINING = web.AppKey("draining", asyncio.Event)
# Ids of jobs whose upload is still arriving: their folders have no row yet.
ACTIVE_UPLOADS = web.AppKey("active_uploads", set[str])
