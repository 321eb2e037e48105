"""The console of `shepherd serve` and `shepherd report`, in Debian's Chromium, headless, driven by Selenium.

The history comes from real rollouts on three real local Tritons (a canary fleet: r0 canary, r1
baseline, r2 stable): v1 promoted on its preflight, v2 (identical) promoted after its canary, v3
(slower) rolled back. `shepherd serve` runs as its own process over that history and the same
replicas. A person's checks: a sign-in is needed; the fleet shows each version's state and where it
serves; the rolled-back version is shown as rolled back, with its reason; the rollout's plot has both
versions' series; clicking a decision marker opens its checks and figures; a viewer sees no promote
button, an operator does, and a forged POST is refused; the history search shows SQL that gives the
same rows when pasted into sqlite3; the static report opens with the network disabled. Screenshots
go to the test's tmp folder (and to $SHEPHERD_CONSOLE_SCREENSHOTS when set, e.g. docs/).

Tests without a browser or Triton (sessions, the figure against Plotly's own schema, the SQL on
PostgreSQL, the alert link) use the small history of tests/test_api.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import plotly.graph_objects as go
import pytest
import requests
from fastapi.testclient import TestClient
from sqlalchemy import text

from builders.repository import ModelRepository
from control_plane import manual
from control_plane.alerts import AlertEvent, render_webhook
from control_plane.alerts.channels import EmailChannel
from control_plane.alerts.email import render_email
from control_plane.api.app import create_app
from control_plane.api.tokens import Tokens
from control_plane.console import charts, search, views
from control_plane.console.render import live_url, report_html
from control_plane.console.session import COOKIE, Sessions
from control_plane.events import console_link
from control_plane.fleet import Replica, fleet_file_text
from control_plane.local_triton import LocalTriton
from control_plane.runtime import open_runtime
from control_plane.settings import load_settings
from control_plane.store import Store
from control_plane.store.models import State
from tests.classifier_models import publish
from tests.test_api import Clock, fill, runtime_over
from tests.test_control_plane import FAST_POLICY, state_of, tick_until

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
NO_BROWSER = "Debian's chromium and chromium-driver are not installed (`make system-deps`)"
SHOTS_ENV = "SHEPHERD_CONSOLE_SCREENSHOTS"


# -- a history from real rollouts, and `shepherd serve` over it ------------------------------------
@dataclass
class Served:
    url: str
    db_path: Path
    db_url: str
    tokens: dict[str, str]
    shots: Path
    workdir: Path


def _fill_from_real_rollouts(workdir: Path, repo: ModelRepository, fleet_file: Path, db_url: str) -> None:
    config = workdir / "shepherd.yaml"
    config.write_text(FAST_POLICY)
    rt = open_runtime(load_settings(config, overrides={"repo": repo.root, "db_url": db_url, "fleet": fleet_file}))
    try:
        build = workdir / "build"
        first = publish(repo, build, "clf", "good")
        tick_until(rt, lambda: state_of(rt, "clf", first) == State.promoted)
        same = publish(repo, build, "clf", "same")
        try:  # the judge promotes an identical version once it has the evidence ...
            tick_until(rt, lambda: state_of(rt, "clf", same) == State.promoted, timeout=25)
        except AssertionError:  # ... which a machine busy with other work can delay: a person promotes it then
            manual.manual_promote(rt, "clf", same, actor="release-manager", reason="identical weights, canary clean")
        slow = publish(repo, build, "clf", "slow")
        tick_until(rt, lambda: state_of(rt, "clf", slow) == State.rolled_back, timeout=120)
    finally:
        rt.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(NO_BROWSER)
    workdir = tmp_path_factory.mktemp("console")
    root = workdir / "model_repository"
    root.mkdir()
    repo = ModelRepository(root)
    db_path = workdir / "history.db"
    db_url = f"sqlite:///{db_path}"
    servers = [LocalTriton(root, state_dir=workdir / f"r{i}") for i in range(3)]
    process = None
    try:
        for server in servers:
            server.__enter__()
        replicas = [
            Replica(f"r{i}", t.state.grpc_url, f"127.0.0.1:{t.state.metrics_port}") for i, t in enumerate(servers)
        ]
        fleet_file = workdir / "fleet.yaml"
        fleet_file.write_text(fleet_file_text(replicas))
        _fill_from_real_rollouts(workdir, repo, fleet_file, db_url)
        with Store.open(db_url, migrate=False) as store:
            made = {
                role: Tokens(store.db).create(name=f"{role}-person", role=role, created_by="test")
                for role in ("viewer", "operator")
            }
        env = {**os.environ, "SHEPHERD_PUBLIC_URL": "https://shepherd.example.com"}
        process = subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", "serve", "--listen", "127.0.0.1:0", "--db", db_url,
             "--repo", str(root), "--fleet", str(fleet_file), "--config", str(workdir / "shepherd.yaml")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "listening on http://" in first, first
        url = first.split("listening on ", 1)[1].split()[0]
        shots = workdir / "screenshots"
        shots.mkdir()
        yield Served(url, db_path, db_url, {r: m.token for r, m in made.items()}, shots, workdir)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        for server in servers:
            server.__exit__(None, None, None)


@pytest.fixture(scope="module")
def browser(served: Served) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1000", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(driver: Any, served: Served, role: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get_log("browser")  # drop what earlier pages logged (a refused sign-in logs its 401)
    driver.delete_all_cookies()
    driver.get(f"{served.url}/console/login")
    driver.find_element(By.ID, "token").send_keys(served.tokens[role])
    driver.find_element(By.CSS_SELECTOR, "section.login button[type=submit]").click()
    wait_for(lambda: "/login" not in driver.current_url)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def screenshot(driver: Any, served: Served, name: str, *, full: bool = False) -> Path:
    """Save a PNG under the test's output (and $SHEPHERD_CONSOLE_SCREENSHOTS); `full`: the whole page's height."""
    if full:
        driver.execute_script("window.scrollTo(0, 0)")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1440, min(int(height) + 40, 4000))
    path = served.shots / f"{name}.png"
    driver.save_screenshot(str(path))
    if full:
        driver.set_window_size(1440, 1000)
    if os.environ.get(SHOTS_ENV):
        target = Path(os.environ[SHOTS_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / f"console-{name}.png")
    assert path.stat().st_size > 10_000
    return path


DECISION_MARKERS = "#plot .subplot.xy5 .scatterlayer path.point"  # the decisions' row (y axis 5)


def stored_reason(served: Served, version: int) -> str:
    with Store.open(served.db_url, migrate=False) as store:
        record = store.read.get_version("clf", version)
        assert record is not None and record.reason
        return record.reason


def rollback_checks(served: Served) -> dict[str, str]:
    """Each check of v3's rollback decision with its status, as stored by the judge."""
    with Store.open(served.db_url, migrate=False) as store:
        (decision,) = [d for d in store.read.decisions("clf", 3) if d.outcome == "rollback"]
        return {c["name"]: c["status"] for c in views.checks_of(decision)}


def manual_actions(served: Served) -> int:
    with Store.open(served.db_url, migrate=False) as store, store.db.engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM manual_actions")).scalar_one())


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("data:", "#")):
                self.found.append(f"<{tag} {name}={value}>")


def external_references(html: str) -> list[str]:
    """Every src/href of the page's tags that would load or lead elsewhere (script bodies are not tags)."""
    parser = _References()
    parser.feed(html)
    return parser.found


def severe_logs(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# -- in the browser ---------------------------------------------------------------------------------
def test_pages_need_a_sign_in_and_the_session_cookie_is_locked_down(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.delete_all_cookies()
    d.get(f"{served.url}/console/rollouts/2")
    assert "/console/login?next=%2Fconsole%2Frollouts%2F2" in d.current_url
    d.find_element(By.ID, "token").send_keys("shp_" + "A" * 43)
    d.find_element(By.CSS_SELECTOR, "section.login button[type=submit]").click()
    assert "not valid" in d.find_element(By.CSS_SELECTOR, ".message.error").text
    assert d.get_cookies() == []
    d.find_element(By.ID, "token").send_keys(served.tokens["viewer"])
    d.find_element(By.CSS_SELECTOR, "section.login button[type=submit]").click()
    wait_for(lambda: d.current_url.endswith("/console/rollouts/2"))
    (cookie,) = d.get_cookies()
    assert cookie["name"] == COOKIE and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console" and served.tokens["viewer"] not in cookie["value"]
    assert d.execute_script("return document.cookie") == ""


def test_fleet_overview_shows_replicas_versions_roles_and_the_last_decision(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    sign_in(d, served, "viewer")
    d.get(f"{served.url}/console/")
    replicas = d.find_elements(By.CSS_SELECTOR, "table.replicas tbody tr")
    assert [r.find_element(By.TAG_NAME, "th").text for r in replicas] == ["r0", "r1", "r2"]
    assert all("reachable" in r.text for r in replicas)
    card = d.find_element(By.ID, "model-clf")
    rows = {r.find_element(By.TAG_NAME, "th").text: r for r in card.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert set(rows) == {"v2", "v3"}
    assert "promoted" in rows["v2"].text and "stable" in rows["v2"].text and rows["v2"].text.count("serves") == 3
    assert "rolled back" in rows["v3"].text and "serves" not in rows["v3"].text
    assert stored_reason(served, 3) in rows["v3"].text and "latency" in stored_reason(served, 3)
    last = card.find_element(By.CSS_SELECTOR, ".last-decision").text
    assert "rollback" in last and "v3" in last
    assert not d.find_elements(By.CSS_SELECTOR, "button.act")
    assert severe_logs(d) == []
    screenshot(d, served, "fleet")


def test_model_page_shows_the_rolled_back_version_with_its_reason_and_no_buttons_for_a_viewer(
    browser: Any, served: Served
) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    sign_in(d, served, "viewer")
    d.get(f"{served.url}/console/models/clf")
    v3 = d.find_element(By.ID, "version-3")
    assert v3.get_attribute("data-state") == "rolled_back"
    assert v3.find_element(By.CSS_SELECTOR, ".version-head .state").text == "rolled back"
    reason = v3.find_element(By.CSS_SELECTOR, ".version-reason").text
    assert reason == f"why rolled back: {stored_reason(served, 3)}"
    moves = [li.find_element(By.CSS_SELECTOR, ".move").text for li in v3.find_elements(By.CSS_SELECTOR, ".changes li")]
    assert moves == ["discovered", "discovered → preflight", "preflight → canary", "canary → rolled back"]
    v2 = d.find_element(By.ID, "version-2")
    assert v2.get_attribute("data-state") == "promoted" and "stable" in v2.text
    assert "canary → promoted" in [
        li.find_element(By.CSS_SELECTOR, ".move").text for li in v2.find_elements(By.CSS_SELECTOR, ".changes li")
    ]
    assert not d.find_elements(By.CSS_SELECTOR, "button.act-promote, button.act-rollback")
    assert not d.find_elements(By.CSS_SELECTOR, "form.action")
    screenshot(d, served, "model")


def _series(d: Any, name: str) -> list[float]:
    script = "return document.getElementById('plot').data.find(t => t.name === arguments[0]).y"
    return [y for y in d.execute_script(script, name) if y is not None]


def test_rollout_plot_has_both_versions_and_a_decision_marker_opens_its_evidence(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d = browser
    sign_in(d, served, "viewer")
    d.get(f"{served.url}/console/rollouts/2")
    plot = d.find_element(By.ID, "plot")
    wait_for(lambda: plot.get_attribute("data-ready") == "true")
    assert "Rollout 2: clf v3 against v2" in d.find_element(By.TAG_NAME, "h1").text
    assert "rolled back" in d.find_element(By.CSS_SELECTOR, ".rollout-outcome").text
    candidate, baseline = _series(d, "candidate v3 p95"), _series(d, "baseline v2 p95")
    assert len(candidate) >= 3 and len(baseline) >= 3
    assert len(_series(d, "candidate v3 p50")) >= 3 and len(_series(d, "baseline v2 p50")) >= 3
    assert sorted(candidate)[len(candidate) // 2] > sorted(baseline)[len(baseline) // 2]  # v3 is the slow one
    assert 100 / 3 - 1 < max(_series(d, "candidate's traffic share")) < 100 / 3 + 1  # 1 canary of 3 replicas
    shown = d.execute_script("return document.getElementById('plot').data.filter(t => t.visible !== 'legendonly')")
    assert len(d.find_elements(By.CSS_SELECTOR, "#plot .scatterlayer .trace")) == len(shown)
    bands = d.execute_script("return document.getElementById('plot').layout.annotations.map(a => a.text)")
    assert bands[0] == "preflight" and bands[1].startswith("step 0: canary 33%")
    steps = d.find_element(By.CSS_SELECTOR, "table.steps tbody").text
    assert "33 %" in steps and "r0: canary" in steps and "r1: baseline" in steps and "r2: stable" in steps

    outcomes = d.execute_script("const t = document.getElementById('plot').data.at(-1); return [t.customdata, t.text]")
    ids, texts = outcomes
    rollback_index = next(i for i, t in enumerate(texts) if t.startswith("rollback"))
    panel = d.find_element(By.ID, f"decision-{ids[rollback_index]}")
    assert not panel.is_displayed()
    markers = d.find_elements(By.CSS_SELECTOR, DECISION_MARKERS)
    assert len(markers) == len(ids)
    ActionChains(d).move_to_element(markers[rollback_index]).pause(0.3).click().perform()  # a person's click
    wait_for(panel.is_displayed)
    assert "rollback" in panel.find_element(By.TAG_NAME, "h3").text
    checks = {
        c.find_element(By.CSS_SELECTOR, ".check-name").text: c for c in panel.find_elements(By.CSS_SELECTOR, "li.check")
    }
    stored = rollback_checks(served)  # what the judge stored is what the panel shows, check by check
    assert set(checks) == set(stored) and "fail" in stored.values()
    for name, status in stored.items():
        assert checks[name].find_element(By.CSS_SELECTOR, ".status").text == status, name
    assert "median_ratio" in checks["latency"].text  # with its figures
    policy = d.find_element(By.CSS_SELECTOR, "dl.policy").text
    assert "max_latency_increase" in policy and "0.25" in policy
    assert severe_logs(d) == []
    screenshot(d, served, "rollout", full=True)

    other = d.find_element(By.CSS_SELECTOR, f"button.evidence[data-decision='{ids[0]}']")
    other.click()  # the same evidence from the keyboard-reachable list
    wait_for(d.find_element(By.ID, f"decision-{ids[0]}").is_displayed)
    assert not panel.is_displayed()


def test_history_search_shows_the_sql_it_ran_and_that_sql_gives_the_same_rows(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    sign_in(d, served, "viewer")
    d.get(f"{served.url}/console/history")
    Select(d.find_element(By.ID, "model")).select_by_visible_text("clf")
    d.find_element(By.CSS_SELECTOR, "input[name=state][value=rolled_back]").click()
    d.find_element(By.CSS_SELECTOR, "form.search button[type=submit]").click()
    wait_for(lambda: "state=rolled_back" in d.current_url)
    rows = d.find_elements(By.CSS_SELECTOR, "table.results tbody tr")
    assert len(rows) == 1 and "v3" in rows[0].text and "rolled back" in rows[0].text
    sql = d.find_element(By.ID, "sql-text").text
    assert "'rolled_back'" in sql and "'clf'" in sql and sql.rstrip().endswith(";")
    with sqlite3.connect(served.db_path) as connection:  # pasted into sqlite3, as the page suggests
        pasted = connection.execute(sql).fetchall()
    assert [(r[0], r[1], r[2]) for r in pasted] == [("clf", 3, "rolled_back")]
    screenshot(d, served, "history")


def test_an_operator_gets_the_buttons_and_forged_posts_are_refused(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    sign_in(d, served, "viewer")
    viewer_cookie = d.get_cookie(COOKIE)["value"]
    viewer_csrf = d.find_element(By.CSS_SELECTOR, "header .who input[name=csrf]").get_attribute("value")
    sign_in(d, served, "operator")
    d.get(f"{served.url}/console/models/clf")
    v3 = d.find_element(By.ID, "version-3")
    assert v3.find_elements(By.CSS_SELECTOR, "button.act-promote")
    assert d.find_element(By.ID, "version-2").find_elements(By.CSS_SELECTOR, "button.act-rollback")
    csrf = v3.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    operator_cookie = d.get_cookie(COOKIE)["value"]
    promote = f"{served.url}/console/models/clf/versions/3/promote"
    before = manual_actions(served)
    form = {"csrf": csrf, "reason": "forged", "back": "/console/models/clf"}
    no_csrf = requests.post(promote, data={**form, "csrf": ""}, cookies={COOKIE: operator_cookie}, allow_redirects=False,
                            timeout=10)  # fmt: skip
    assert no_csrf.status_code == 403
    other_site = requests.post(promote, data=form, cookies={COOKIE: operator_cookie}, allow_redirects=False,
                               headers={"Origin": "https://evil.example"}, timeout=10)  # fmt: skip
    assert other_site.status_code == 403
    as_viewer = requests.post(promote, data={**form, "csrf": viewer_csrf}, cookies={COOKIE: viewer_cookie},
                              allow_redirects=False, timeout=10)  # fmt: skip
    assert as_viewer.status_code == 403 and "operator role" in as_viewer.text  # a valid form, not the role
    with Store.open(served.db_url, migrate=False) as store:
        assert store.read.get_version("clf", 3).state == State.rolled_back
    assert manual_actions(served) == before


def test_the_static_report_opens_with_the_network_disabled(browser: Any, served: Served) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out = served.workdir / "rollout-2.html"
    done = subprocess.run(
        [sys.executable, "-m", "control_plane.cli", "report", "--rollout", "2", "--out", str(out), "--db",
         served.db_url, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "SHEPHERD_PUBLIC_URL": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "rolled_back"
    assert external_references(out.read_text(encoding="utf-8")) == []
    d = browser
    d.get_log("browser")
    d.delete_all_cookies()
    d.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    try:
        d.get(out.as_uri())
        plot = d.find_element(By.ID, "plot")
        wait_for(lambda: plot.get_attribute("data-ready") == "true")
        assert _series(d, "candidate v3 p95") and _series(d, "baseline v2 p95")
        fetched = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert [u for u in fetched if not u.startswith("data:")] == []
        ids = d.execute_script("return document.getElementById('plot').data.at(-1).customdata")
        markers = d.find_elements(By.CSS_SELECTOR, DECISION_MARKERS)
        ActionChains(d).move_to_element(markers[-1]).pause(0.3).click().perform()
        wait_for(d.find_element(By.ID, f"decision-{ids[-1]}").is_displayed)
        assert not d.find_elements(By.CSS_SELECTOR, "form.action, button.act")
        assert severe_logs(d) == []
        screenshot(d, served, "report")
    finally:
        d.set_network_conditions(offline=False, latency=0, download_throughput=-1, upload_throughput=-1)


def test_an_operator_rolls_back_the_stable_version_from_the_console(browser: Any, served: Served) -> None:
    """Last: it changes the history. A real manual rollback through the form, converged on every replica."""
    from selenium.webdriver.common.by import By

    d = browser
    sign_in(d, served, "operator")
    d.get(f"{served.url}/console/models/clf")
    form = d.find_element(By.CSS_SELECTOR, "#version-2 form.action[action$='/rollback']")
    form.find_element(By.NAME, "reason").send_keys("console test: back to v1")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(lambda: d.find_elements(By.CSS_SELECTOR, ".message"), timeout=60)
    message = d.find_element(By.CSS_SELECTOR, ".message")
    assert "rollback of clf v2 done by operator-person" in message.text, message.text
    assert d.find_element(By.ID, "version-2").get_attribute("data-state") == "rolled_back"
    change = d.find_elements(By.CSS_SELECTOR, "#version-2 .changes li")[-1].text
    assert "by operator-person" in change and "console test: back to v1" in change
    d.get(f"{served.url}/console/models/clf")
    assert not d.find_elements(By.CSS_SELECTOR, ".message")  # shown once


# -- without a browser --------------------------------------------------------------------------------
@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[TestClient, Store, int, dict[str, str]]]:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    clock = Clock()
    with Store.open(url, clock=clock) as store:
        rollout = fill(store, clock)
    rt = runtime_over(url, tmp_path)
    tokens = Tokens(rt.store.db)
    made = {role: tokens.create(name=f"{role}-x", role=role, created_by="t").token for role in ("viewer", "admin")}
    try:
        yield TestClient(create_app(rt)), rt.store, rollout, made
    finally:
        rt.close()


def test_sessions_expire_are_bound_to_the_token_and_cannot_be_forged() -> None:
    sessions = Sessions(b"s" * 32, lifetime_s=60)
    live = {3: "a" * 64}
    cookie = sessions.issue(token_id=3, digest=live[3], now=1000)
    assert sessions.verify(cookie, digest_of=live.get, now=1030) == 3
    assert sessions.verify(cookie, digest_of=live.get, now=1061) is None  # expired
    assert sessions.verify(cookie, digest_of={}.get, now=1030) is None  # revoked or unknown token
    assert sessions.verify(cookie.replace("3.", "4.", 1), digest_of={4: "a" * 64}.get, now=1030) is None
    assert Sessions(b"t" * 32).verify(cookie, digest_of=live.get, now=1030) is None  # another secret
    assert sessions.verify("garbage", digest_of=live.get) is None
    assert sessions.csrf_ok(cookie, sessions.csrf(cookie)) and not sessions.csrf_ok(cookie, "")
    with pytest.raises(Exception, match="at least 32"):
        Sessions.from_env({"SHEPHERD_SESSION_SECRET": "short"})


def test_pages_answer_a_bearer_token_and_the_api_schema_is_unchanged(
    small: tuple[TestClient, Store, int, dict[str, str]],
) -> None:
    client, _store, rollout, tokens = small
    bearer = {"Authorization": f"Bearer {tokens['viewer']}"}
    for path in ("/console/", "/console/models/intent", f"/console/rollouts/{rollout}", "/console/history"):
        page = client.get(path, headers=bearer)
        assert page.status_code == 200, path
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
    assert client.get("/console/", follow_redirects=False).status_code == 303
    assert client.get("/console/models/nope", headers=bearer).status_code == 404
    assert client.get("/console/static/plotly.min.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/static/../app.py").status_code == 404
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/console") or p == "/"]
    report = client.get(f"/console/rollouts/{rollout}/report", headers=bearer)
    assert report.status_code == 200 and "attachment" in report.headers["content-disposition"]
    assert external_references(report.text) == []  # no public_url: no link out
    data = views.rollout_data(_store, rollout)
    assert data is not None
    linked = report_html(data, source="test", live_url=live_url("https://s.example.com/", rollout))
    assert external_references(linked) == [f"<a href=https://s.example.com/console/rollouts/{rollout}>"]


def test_the_figure_is_valid_plotly_and_tells_series_apart_without_colour(
    small: tuple[TestClient, Store, int, dict[str, str]],
) -> None:
    _client, store, rollout, _tokens = small
    data = views.rollout_data(store, rollout)
    assert data is not None
    figure = charts.figure(data)
    go.Figure(figure)  # Plotly's own validators: every property and value exists
    latency = [t for t in figure["data"] if t["yaxis"] == "y" and t.get("visible") != "legendonly"]
    styles = {(t["line"]["dash"], t["marker"]["symbol"]) for t in latency}
    assert len(styles) == len(latency)  # each latency series differs by dash or symbol, not by colour only


def test_the_history_sql_runs_as_shown_on_postgresql(postgres_schema_url: str) -> None:
    clock = Clock()
    with Store.open(postgres_schema_url, clock=clock) as store:
        fill(store, clock)
        found = search.search(
            store.db,
            search.Filters(model="intent", states=("rejected", "canary"), since=datetime(2026, 11, 1, tzinfo=UTC)),
        )
        assert [(r["version"], r["state"]) for r in found.rows] == [(3, "rejected"), (2, "canary")]
        with store.db.engine.connect() as connection:  # the text as shown, run as it is
            pasted = connection.execute(text(found.sql.removesuffix(";"))).fetchall()
        assert [(r.version, r.state) for r in pasted] == [(3, "rejected"), (2, "canary")]


def test_alerts_link_to_the_console_when_a_public_url_is_set(tmp_path: Path) -> None:
    event = AlertEvent(event="rollback", model="intent", version=7, reason="latency regressed",
                       at=datetime(2026, 11, 2, tzinfo=UTC), severity="critical",
                       link="https://shepherd.example.com/console/rollouts/12")  # fmt: skip
    assert render_webhook(event, "generic")["link"] == event.link
    assert event.link in json.dumps(render_webhook(event, "slack"))
    assert event.link in render_webhook(event, "wecom")["markdown"]["content"]
    mail = render_email(event, EmailChannel(host="smtp", port=25, sender="s@x.org", recipients=("o@x.org",)))
    assert event.link in mail.get_content()
    assert "link" not in AlertEvent(event="rollback", model="m", version=1, reason="r", at=event.at).as_dict()
    without: Any = SimpleNamespace(settings=load_settings(None, env={}))
    assert console_link(without, "intent", 12) is None  # no public_url: no link
    settings = load_settings(None, env={"SHEPHERD_PUBLIC_URL": "https://s.example.com/ops/"})
    rt: Any = SimpleNamespace(settings=settings)
    assert console_link(rt, "intent", 12) == "https://s.example.com/ops/console/rollouts/12"
    assert console_link(rt, "intent", None) == "https://s.example.com/ops/console/models/intent"


# -- the CLI around it ----------------------------------------------------------------------------------
def test_help_lists_every_exit_code_of_the_readme(capsys: pytest.CaptureFixture[str]) -> None:
    from control_plane.cli import main

    assert main(["--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    table = (ROOT / "README.md").read_text(encoding="utf-8").split("## Exit codes", 1)[1]
    codes = {int(c) for row in re.findall(r"^\| ([\d-]+) \|", table, flags=re.M) for c in row.split("-")}
    assert codes and all(re.search(rf"\b{code}\b", shown) for code in codes), sorted(codes)
    assert "Exit codes:" in shown


def test_report_refuses_an_unknown_rollout_and_a_missing_database(tmp_path: Path) -> None:
    from control_plane.cli import main

    url = f"sqlite:///{tmp_path / 'history.db'}"
    clock = Clock()
    with Store.open(url, clock=clock) as store:
        fill(store, clock)
    out = tmp_path / "r.html"
    assert main(["report", "--rollout", "99", "--out", str(out), "--db", url]) == 20 and not out.exists()
    assert main(["report", "--rollout", "1", "--out", str(out), "--db", f"sqlite:///{tmp_path / 'no.db'}"]) == 21
    assert main(["report", "--rollout", "1", "--out", str(tmp_path / "nope" / "r.html"), "--db", url]) == 20
    assert main(["report", "--rollout", "1", "--out", str(out), "--db", url]) == 0
    assert external_references(out.read_text(encoding="utf-8")) == [] and not list(tmp_path.glob(".r.html.*"))
