"""RQ job functions by domain. Jobs take ids, run inside an app context, and raise on failure."""
import gc
import os
from contextlib import contextmanager

from flask import Flask, current_app, has_app_context

_worker_app: Flask | None = None


def set_worker_app(app: Flask) -> None:
    global _worker_app
    _worker_app = app


@contextmanager
def app_context():
    """The caller's app context when a job runs in-process (tests), else the worker's."""
    global _worker_app
    if has_app_context():
        _after_fork(current_app._get_current_object())
        yield
        return
    if _worker_app is None:
        from portal import create_app

        _worker_app = create_app()
    with _worker_app.app_context():
        _after_fork(_worker_app)
        yield


def _after_fork(app: Flask) -> None:
    # RQ runs each job in a forked child: pooled database connections inherited from the
    # parent must not be shared with it (SQLAlchemy's documented fork recipe).
    pid = os.getpid()
    if app.extensions.get("eis_pid") != pid:
        from portal.extensions import db

        if app.extensions.get("eis_pid") is not None:
            for engine in db.engines.values():
                engine.dispose(close=False)
        app.extensions["eis_pid"] = pid


def prepare_worker_process() -> None:
    """Before a worker forks its first job: import what the jobs use, then move every
    object that exists now out of the garbage collector's sight (gc.freeze, as the Python
    docs advise before fork()). The jobs' collections then no longer walk the app's
    hundreds of thousands of long-lived objects: a 20,000-message back-fill spent 0.15 s
    in the collector, 0.04 s after (bench/sync.py). Forked children also keep sharing those
    memory pages instead of copying them when the collector touches them."""
    from sqlalchemy.orm import configure_mappers

    import portal.jobs.schedule  # noqa: F401 - imported here so the horses inherit them
    import portal.jobs.send  # noqa: F401
    import portal.jobs.sync  # noqa: F401
    import portal.sync  # noqa: F401

    configure_mappers()
    gc.collect()
    gc.freeze()
