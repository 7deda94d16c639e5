"""Typed keys for the resources that `create_app` puts on the application."""

from __future__ import annotations

from aiohttp import web

from .config import Settings
from .ml_client import MLClient
from .results import ResultArchives
from .store import Store
from .worker import WorkerPool

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
ML_CLIENT = web.AppKey("ml_client", MLClient)
POOL = web.AppKey("pool", WorkerPool)
ARCHIVES = web.AppKey("archives", ResultArchives)
