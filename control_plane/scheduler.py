"""`shepherd run`: the long-running APScheduler process.

Reconcile, probe and judge run as interval jobs; each model with promotion windows also gets a
cron job per window that judges its canary when the window opens. The job store lives in the same
SQL database as the history, so schedules survive a restart. Jobs in a persistent store are saved by
reference, so they reach the runtime through this module rather than through pickled arguments.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from control_plane import reconciler
from control_plane.runtime import Runtime

log = logging.getLogger("shepherd.scheduler")

JOB_TABLE = "apscheduler_jobs"
_runtime: Runtime | None = None


def _rt() -> Runtime:
    if _runtime is None:
        raise RuntimeError("the scheduler's runtime is not set")
    return _runtime


def _guarded(name: str, step: Any) -> None:
    """A job never dies of an exception: it is logged and the next round tries again."""
    try:
        report = step(_rt())
        for error in report.errors:
            log.warning("%s: %s", name, error)
    except Exception:
        log.exception("%s job failed; the next round retries", name)


def reconcile_job() -> None:
    _guarded("reconcile", reconciler.reconcile)


def probe_job() -> None:
    _guarded("probe", reconciler.probe)


def judge_job() -> None:
    _guarded("judge", reconciler.judge)


def promotion_window_job(model: str) -> None:
    """Judge the model's canary when its promotion window opens (it may have passed outside it)."""
    _guarded(f"promotion window {model}", lambda rt: reconciler.judge(rt, model=model))


def build_scheduler(rt: Runtime) -> BackgroundScheduler:
    global _runtime
    _runtime = rt
    # The jobs share one lock, so a round that finds the previous one still running is skipped by
    # design (coalesced); APScheduler would log each skip as a warning.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=rt.settings.db_url, tablename=JOB_TABLE)},
        executors={"default": ThreadPoolExecutor(2)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        timezone="UTC",
    )
    every = rt.settings.reconcile_interval_seconds
    probe_every = rt.settings.probe_interval_seconds
    scheduler.add_job(reconcile_job, "interval", seconds=every, id="reconcile", replace_existing=True)
    scheduler.add_job(probe_job, "interval", seconds=probe_every, id="probe", replace_existing=True)
    scheduler.add_job(judge_job, "interval", seconds=probe_every, id="judge", replace_existing=True)
    for model in rt.repo.models():
        for number, window in enumerate(rt.settings.policy_for(model).promotion_windows):
            trigger = CronTrigger(day_of_week=window.day_of_week, hour=window.hour, timezone=window.timezone)
            scheduler.add_job(
                promotion_window_job,
                trigger,
                args=[model],
                id=f"promotion-window:{model}:{number}",
                replace_existing=True,
            )
    return scheduler


def run_forever(rt: Runtime, *, max_seconds: float | None = None) -> None:
    """Run the jobs until SIGINT/SIGTERM (or `max_seconds`, for demos and tests)."""
    scheduler = build_scheduler(rt)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping after the running jobs", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    scheduler.start()
    reconcile_job()  # converge at once rather than one interval later
    try:
        stop.wait(timeout=max_seconds)
    finally:
        scheduler.shutdown(wait=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
