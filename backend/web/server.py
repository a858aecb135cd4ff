"""``weather-al serve``: the web process of a running backend (the worker is ``backend.worker.run``).

``serve`` runs the Flask app under gunicorn (Label Studio's own convention for ML backends). Without
``REDIS_URL`` it starts an embedded Redis under ``MODEL_DIR`` and a worker beside itself, so one
command gives a working backend; with ``REDIS_URL`` it starts no worker: run ``weather-al worker`` on
any number of machines that share the Redis and the ``MODEL_DIR``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from backend.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def serve(settings: Settings | None = None, with_worker: bool | None = None) -> None:
    settings = settings or get_settings()
    settings.check_basic_auth()  # before anything starts; model_copy(update=...) skips validators
    redis_server = None
    if not settings.redis_url:
        from backend.queue import start_embedded_redis

        redis_server, url = start_embedded_redis(settings.model_dir)
        os.environ["REDIS_URL"] = url
        settings = settings.model_copy(update={"redis_url": url})
        with_worker = True if with_worker is None else with_worker
    worker = None
    if with_worker:
        worker = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker"], env=os.environ.copy())
        logger.info("started a worker beside the web process (pid %d)", worker.pid)
    try:
        _run_gunicorn(settings)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if redis_server is not None:
            redis_server.shutdown()


def _run_gunicorn(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    from backend.web.app import create_app

    class _App(BaseApplication):
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": bind_address(settings),
                "workers": settings.workers,
                "threads": settings.threads,
                "worker_class": "gthread",
                "timeout": 180,
                "graceful_timeout": 30,
                "loglevel": settings.log_level.lower(),
                "accesslog": "-" if settings.log_level.upper() == "DEBUG" else None,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            import torch

            # One intra-op thread in the web process. Label Studio asks for one task at a time as people open
            # them, and for a single image a second OpenMP thread costs more than it gives (each gunicorn thread
            # that runs a forward pass brings its own team of busy-waiting threads); concurrent requests use the
            # other cores. benchmarks/bench_backend.py: /predict of one task 1.4-1.9x the forward pass with one
            # thread, 2.4-3.4x with two; 500 tasks in 14-19 s instead of 11-13 s, inside the 30 s target.
            torch.set_num_threads(1)
            return create_app(settings)

    logger.info("weather-al backend listening on %s (MODEL_DIR=%s)", bind_address(settings), settings.model_dir)
    warn_if_open(settings)
    _App().run()


def bind_address(settings: Settings) -> str:
    """gunicorn's ``bind`` for HOST and PORT (an IPv6 address goes in brackets)."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` keeps the server to this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def warn_if_open(settings: Settings) -> bool:
    """Say so at start-up when anyone on the network may call the backend; returns whether it warned.

    Label Studio's convention is HOST=0.0.0.0 and no auth, but then anyone who reaches the port can post
    webhooks, make the backend download URLs through /predict, and read /versions and /metrics.
    """
    if settings.basic_auth_enabled or is_loopback(settings.host):
        return False
    logger.warning(
        "serving WITHOUT authentication on %s: anyone who can reach this port can call the backend. Set "
        "BASIC_AUTH_USER and BASIC_AUTH_PASS (and the same in Label Studio's Connect Model dialog, "
        "Authentication: basic), or HOST=127.0.0.1 to keep it to this machine",
        bind_address(settings),
    )
    return True
