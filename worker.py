"""RQ worker for the Email Integration Service.

    python worker.py            work the queues (send, sync, default) and run the scheduler
    python worker.py --burst    run every queued job, then exit
"""
import argparse
import logging
import os
import sys

from rq import Worker

from portal import create_app
from portal.jobs.context import set_worker_app
from portal.jobs.schedule import start_scheduler_process
from portal.jobs.worker import prepare_worker_process
from portal.queue import QUEUES, get_redis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", action="store_true", help="run what is queued, then exit")
    parser.add_argument("--no-scheduler", action="store_true",
                        help="do not run the scheduler loop in this process (another process runs it)")
    parser.add_argument("--name", help="worker name (default: RQ's)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=os.environ.get("EIS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app()
    set_worker_app(app)
    connection = get_redis(app)
    scheduler = None
    if not args.burst and not args.no_scheduler:
        scheduler = start_scheduler_process()
    prepare_worker_process()
    try:
        worker = Worker(list(QUEUES), connection=connection, name=args.name)
        worker.work(burst=args.burst, logging_level=os.environ.get("EIS_LOG_LEVEL", "INFO"))
    finally:
        if scheduler is not None:
            scheduler.terminate()
            scheduler.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
