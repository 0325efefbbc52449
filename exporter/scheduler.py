"""The collection schedule: an APScheduler BackgroundScheduler job every --interval."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler

from exporter.collection import Collection

log = logging.getLogger(__name__)


def start_scheduler(collection: Collection, interval: float) -> BackgroundScheduler:
    """Run ``collection.run_once`` now and then every ``interval`` seconds.

    One run at a time (max_instances=1); runs missed while one was slow are coalesced into one.
    """
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_job(collection.run_once, "interval", seconds=interval, id="collect",
                      max_instances=1, coalesce=True, misfire_grace_time=max(1, int(interval)),
                      next_run_time=datetime.now(timezone.utc))
    scheduler.start()
    return scheduler
