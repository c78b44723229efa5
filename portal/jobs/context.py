"""The app context a job runs in: the worker's app (set by worker.py before it forks work
horses), or the caller's when a job runs in-process (tests). A forked child never shares the
parent's pooled database connections."""
import os
from contextlib import contextmanager

from flask import Flask, current_app, has_app_context

from portal import create_app
from portal.extensions import db

_worker_app: Flask | None = None


def set_worker_app(app: Flask) -> None:
    global _worker_app
    _worker_app = app


@contextmanager
def app_context():
    """The caller's app context when a job runs in-process (tests), else the worker's."""
    if has_app_context():
        _after_fork(current_app._get_current_object())
        yield
        return
    global _worker_app
    if _worker_app is None:  # a worker that did not set one (`rq worker`): the app from the configuration
        _worker_app = create_app()
    with _worker_app.app_context():
        _after_fork(_worker_app)
        yield


def _after_fork(app: Flask) -> None:
    # RQ runs each job in a forked child: pooled database connections inherited from the
    # parent must not be shared with it (SQLAlchemy's documented fork recipe).
    pid = os.getpid()
    if app.extensions.get("eis_pid") != pid:
        if app.extensions.get("eis_pid") is not None:
            for engine in db.engines.values():
                engine.dispose(close=False)
        app.extensions["eis_pid"] = pid
