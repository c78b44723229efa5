"""RQ worker for the Email Integration Service.

    python worker.py            work the queues (send, sync, default) and run the scheduler
    python worker.py --burst    run every queued job, then exit

It keeps running through outages: when Redis is away it waits for it (and logs so), when
the database is away the jobs fail and their mailboxes are due again within the longest
sync interval, and the scheduler's process is started again if it ever ends.
"""
import argparse
import logging
import os
import sys

from portal import create_app
from portal.jobs.context import set_worker_app
from portal.jobs.schedule import start_scheduler_process
from portal.jobs.worker import prepare_worker_process, work_until_stopped
from portal.queue import get_redis

log = logging.getLogger("worker")


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

    def keep_scheduler() -> None:
        nonlocal scheduler
        if scheduler is not None and not scheduler.is_alive():
            log.error("the scheduler process ended (exit code %s); starting it again", scheduler.exitcode)
            scheduler = start_scheduler_process()

    prepare_worker_process()
    try:
        return work_until_stopped(connection, name=args.name, burst=args.burst,
                                  logging_level=os.environ.get("EIS_LOG_LEVEL", "INFO"),
                                  before_restart=keep_scheduler)
    finally:
        if scheduler is not None:
            scheduler.terminate()
            scheduler.join(10)


if __name__ == "__main__":
    sys.exit(main())
