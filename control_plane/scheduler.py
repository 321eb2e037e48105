"""`shepherd run`: the long-running process; it acts only while it leads its history database.

Reconcile, probe and judge run as interval jobs; each model with promotion windows also gets a
cron job per window that judges its canary when the window opens. The jobs live in the scheduler's
own memory: the schedule comes from shepherd.yaml at every start and the state of every rollout
from the history, so there is nothing to persist, and no job store is shared between processes
(APScheduler forbids sharing one). A job never runs over itself (`max_instances=1`, coalesced), and
every job takes the runtime's lock, so no two jobs of one process act at the same time.

Only one `shepherd run` per history database acts (control_plane/leader.py):

    standby --acquire--> leader --confirm fails / lease runs out--> stop the jobs, release --> standby
       ^  \\--retry every retry_seconds                                   (a job still running at the
       |                                                                   fence: exit 23)
       +-- SIGINT/SIGTERM at any point: stop the jobs (waiting for the running ones), release, return

A standby schedules nothing; a new leader builds a fresh scheduler whose reconcile runs at once, so a
restarted (or newly elected) process resumes where the history says. `leader_status()` tells code in
this process (the `/metrics` endpoint) whether it leads.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from control_plane import reconciler
from control_plane.api.metrics import timed_pass
from control_plane.clock import utc_now
from control_plane.errors import LeaderError
from control_plane.leader import Leadership, LeaderTiming, leadership_for
from control_plane.report import TickReport
from control_plane.runtime import Runtime

log = logging.getLogger("shepherd.scheduler")

WATCH_SECONDS = 0.2  # how often the leader's main thread looks at its lease
Step = Callable[[Runtime], TickReport]
JobRunner = Callable[[str, Step], None]


@dataclass(frozen=True)
class LeaderStatus:
    """Whether this process leads its history database, since when, and who leads if not.

    role: "leader", "standby" (another process leads, or the lock could not be tried) or "stopped".
    """

    role: str
    since: datetime
    lock: str  # the lock, e.g. "PostgreSQL advisory lock ... in postgresql+psycopg://shepherd@db/shepherd"
    holder: str | None = None  # who holds it, as far as this process can see
    terms: int = 0  # how many times this process became leader

    @property
    def leading(self) -> bool:
        return self.role == "leader"

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "leading": self.leading,
            "since": self.since.isoformat(),
            "lock": self.lock,
            "holder": self.holder,
            "terms": self.terms,
        }


_STOPPED = LeaderStatus(role="stopped", since=utc_now(), lock="none")
_current: ScheduledControlPlane | None = None


def leader_status() -> LeaderStatus:
    """The leader status of the `shepherd run` in this process ("stopped" when none runs)."""
    control_plane = _current
    return control_plane.leader_status() if control_plane is not None else _STOPPED


def _log_report(name: str, report: TickReport) -> None:
    for error in report.errors:
        log.warning("%s: %s", name, error)
    level = logging.INFO if name == "reconcile" or report.actions or report.errors else logging.DEBUG
    log.log(level, "pass %s: %d actions, %d errors", name, len(report.actions), len(report.errors))


def run_guarded(rt: Runtime, name: str, step: Step) -> None:
    """A job never dies of an exception: it is logged and the next round tries again."""
    try:
        _log_report(name, timed_pass(name, step, rt))
    except Exception:
        log.exception("%s job failed; the next round retries", name)


def build_scheduler(rt: Runtime, *, run_job: JobRunner | None = None) -> BackgroundScheduler:
    """A scheduler (not started) with the jobs of shepherd.yaml, in its own memory; `run_job` wraps each run."""
    runner: JobRunner = run_job or partial(run_guarded, rt)
    # The jobs share one lock, so a round that finds the previous one still running is skipped by
    # design (coalesced); APScheduler would log each skip as a warning.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(2)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        timezone="UTC",
    )
    every = rt.settings.reconcile_interval_seconds
    probe_every = rt.settings.probe_interval_seconds
    # The first reconcile runs at once: a restarted or newly elected process converges without waiting.
    scheduler.add_job(
        runner,
        "interval",
        args=["reconcile", reconciler.reconcile],
        seconds=every,
        id="reconcile",
        next_run_time=utc_now(),
    )
    scheduler.add_job(runner, "interval", args=["probe", reconciler.probe], seconds=probe_every, id="probe")
    scheduler.add_job(runner, "interval", args=["judge", reconciler.judge], seconds=probe_every, id="judge")
    for model in rt.repo.models():
        for number, window in enumerate(rt.settings.policy_for(model).promotion_windows):
            trigger = CronTrigger(day_of_week=window.day_of_week, hour=window.hour, timezone=window.timezone)
            judge_model: Step = partial(_judge_model, model=model)
            scheduler.add_job(
                runner,
                trigger,
                args=[f"promotion window {model}", judge_model],
                id=f"promotion-window:{model}:{number}",
            )
    return scheduler


def _judge_model(rt: Runtime, *, model: str) -> TickReport:
    """Judge the model's canary when its promotion window opens (it may have passed outside it)."""
    return reconciler.judge(rt, model=model)


def _exit_process(code: int) -> None:
    """End the process now: no atexit handlers, no joining the thread of a job that still runs."""
    logging.shutdown()
    os._exit(code)


class ScheduledControlPlane:
    """The jobs of one `shepherd run`, scheduled only while this process holds the leader lock."""

    def __init__(
        self,
        rt: Runtime,
        leadership: Leadership,
        *,
        exit_process: Callable[[int], None] = _exit_process,
    ) -> None:
        self.rt = rt
        self.leadership = leadership
        self.timing: LeaderTiming = leadership.timing
        self._exit_process = exit_process
        self._status = LeaderStatus(role="standby", since=utc_now(), lock=leadership.lock_name)
        self._said: tuple[str, str | None] | None = None  # the last role (and holder) logged
        self._running = 0
        self._idle = threading.Condition()

    # -- status ----------------------------------------------------------------------------------
    def leader_status(self) -> LeaderStatus:
        return self._status

    def _set(self, role: str, holder: str | None) -> None:
        old = self._status
        terms = old.terms + (role == "leader" and old.role != "leader")
        since = old.since if role == old.role else utc_now()
        self._status = LeaderStatus(role=role, since=since, lock=old.lock, holder=holder, terms=terms)

    # -- jobs ------------------------------------------------------------------------------------
    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._idle:
            self._running += 1
        try:
            yield
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def run_job(self, name: str, step: Step) -> None:
        """Run one job, if this process still leads (within its lease); never raises."""
        with self._counted():
            if not self.leadership.is_leader():
                log.info("pass %s skipped: this process does not lead", name)
                return
            run_guarded(self.rt, name, step)

    def _wait_idle(self, until: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout=max(0.0, until - time.monotonic()))

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Standby until the lock is had, lead until it is lost, again, until `stop` is set."""
        first = True
        try:
            while not stop.is_set():
                try:
                    acquired = self.leadership.acquire()
                except LeaderError as exc:
                    if first:
                        raise  # a lock that cannot be tried at start is a setting to fix, not to wait out
                    log.warning("standby: %s; trying again in %g s", exc, self.timing.retry_seconds)
                    self._set("standby", None)
                    acquired = False
                first = False
                if acquired:
                    self._lead(stop)
                    continue
                self._standby()
                stop.wait(self.timing.retry_seconds)
        finally:
            self.leadership.release()
            self._set("stopped", None)

    def _standby(self) -> None:
        holder = self.leadership.holder()
        if self._said != ("standby", holder):  # say it once, and again when the holder changes
            log.info(
                "standby: %s holds the %s; this process waits, trying every %g s",
                holder or "another process",
                self.leadership.lock_name,
                self.timing.retry_seconds,
            )
            self._said = ("standby", holder)
        self._set("standby", holder)

    def _lead(self, stop: threading.Event) -> None:
        self._set("leader", self.leadership.me)
        self._said = ("leader", self.leadership.me)
        log.info("leading: this process holds the %s; scheduling the jobs", self.leadership.lock_name)
        scheduler = build_scheduler(self.rt, run_job=self.run_job)
        done = threading.Event()
        keeper = threading.Thread(target=self._keep, args=(done,), name="shepherd-leader-keeper", daemon=True)
        scheduler.start()
        keeper.start()
        while not stop.wait(WATCH_SECONDS) and self.leadership.is_leader():
            pass
        done.set()
        if stop.is_set():  # asked to stop: finish the running jobs, then let the lock go
            scheduler.shutdown(wait=True)
            keeper.join()
            self.leadership.release()
            return
        reason = self.leadership.lost_because or f"no confirmation for {self.timing.lease_seconds:g} s"
        log.warning("leadership lost (%s): stopping the jobs", reason)
        self._said = ("lost", None)
        self._set("standby", None)
        scheduler.shutdown(wait=False)  # nothing new starts; the running jobs finish or are fenced
        fence = self.leadership.confirmed_at + self.timing.fence_seconds
        if not self._wait_idle(fence):
            log.critical(
                "a job still runs %g s after the last confirmation of the lock: exiting (code %d) so that "
                "it cannot act beside the next leader",
                self.timing.fence_seconds,
                LeaderError.exit_code,
            )
            self._exit_process(LeaderError.exit_code)
            return
        keeper.join(timeout=max(0.0, fence - time.monotonic()))
        if keeper.is_alive():  # its confirmation hangs on a dead connection: the process cannot reuse it
            log.critical("the lock's connection hangs: exiting (code %d)", LeaderError.exit_code)
            self._exit_process(LeaderError.exit_code)
            return
        self.leadership.release()
        log.info("stopped the jobs; standby again")

    def _keep(self, done: threading.Event) -> None:
        """The leader's keeper: confirm the lock every check_seconds until told to stop or it is lost."""
        while not done.wait(self.timing.check_seconds):
            if not self.leadership.confirm():
                return


def run_forever(
    rt: Runtime,
    *,
    max_seconds: float | None = None,
    timing: LeaderTiming | None = None,
    leadership: Leadership | None = None,
) -> None:
    """Stand by or lead until SIGINT/SIGTERM (or `max_seconds`, for demos and tests)."""
    global _current
    leadership = leadership or leadership_for(rt.settings.db_url, role="run", timing=timing)
    control_plane = ScheduledControlPlane(rt, leadership)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping after the running jobs", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    timer = threading.Timer(max_seconds, stop.set) if max_seconds is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    _current = control_plane
    try:
        control_plane.run(stop)
    finally:
        _current = None
        if timer is not None:
            timer.cancel()
        leadership.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
