"""Policies, promotion windows and settings loading: precedence, and clear errors naming the file and key."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from control_plane.errors import ConfigError
from control_plane.policy import Policy, PromotionWindow
from control_plane.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
NO_ENV: dict[str, str] = {}


def _write(tmp_path: Path, text: str, name: str = "shepherd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- promotion windows ------------------------------------------------------------------------
def test_weekday_office_hours_window_in_its_own_timezone() -> None:
    window = PromotionWindow(day_of_week="mon-fri", hour="9-16", timezone="Europe/Berlin")
    tuesday = datetime(2026, 11, 24, tzinfo=UTC)  # Berlin is UTC+1 in November
    assert not window.is_open(tuesday.replace(hour=7, minute=59))  # 08:59 Berlin
    assert window.is_open(tuesday.replace(hour=8, minute=0))  # 09:00 Berlin
    assert window.is_open(tuesday.replace(hour=15, minute=59, second=59))  # 16:59:59 Berlin
    assert not window.is_open(tuesday.replace(hour=16))  # 17:00 Berlin
    assert not window.is_open(datetime(2026, 11, 28, 10, tzinfo=UTC))  # Saturday
    eastern = timezone(timedelta(hours=-5))
    assert window.is_open(datetime(2026, 11, 24, 4, 30, tzinfo=eastern))  # 10:30 Berlin, given in UTC-5


def test_default_window_is_always_open_and_naive_times_are_utc() -> None:
    assert PromotionWindow().is_open(datetime(2026, 1, 1, 3, 17))
    policy = Policy(promotion_windows=(PromotionWindow(hour="12"),))
    assert policy.window_open(datetime(2026, 1, 1, 12, 30))
    assert not policy.window_open(datetime(2026, 1, 1, 13, 0))
    assert Policy().window_open(datetime(2026, 1, 1, 13, 0))


@pytest.mark.parametrize(
    "kwargs", [dict(hour="25"), dict(day_of_week="funday"), dict(timezone="Mars/Olympus_Mons"), dict(hour="9-")]
)
def test_bad_cron_fields_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="promotion window"):
        PromotionWindow(**kwargs)


def test_policy_as_dict_is_json_with_its_windows() -> None:
    policy = Policy(promotion_windows=(PromotionWindow("mon-fri", "9-16", "UTC"),), quality_floor=0.8)
    data = json.loads(json.dumps(policy.as_dict()))
    assert data["promotion_windows"] == [{"day_of_week": "mon-fri", "hour": "9-16", "timezone": "UTC"}]
    assert data["quality_floor"] == 0.8 and data["alpha"] == 0.01


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(bake_seconds=-1), "bake_seconds"),
        (dict(alpha=0), "alpha"),
        (dict(alpha=1.5), "alpha"),
        (dict(max_error_rate=1.0), "max_error_rate"),
        (dict(probe_batch_size=0), "probe_batch_size"),
        (dict(min_samples=2), "min_samples"),
        (dict(min_agreement=1.5), "min_agreement"),
        (dict(bake_seconds=900), "max_canary_seconds"),
    ],
)
def test_policy_refuses_nonsense(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Policy(**kwargs)


# -- settings ---------------------------------------------------------------------------------
def test_repository_shepherd_yaml_loads_and_covers_the_example_models() -> None:
    settings = load_settings(ROOT / "shepherd.yaml", env=NO_ENV)
    assert settings.source == ROOT / "shepherd.yaml"
    assert settings.repo == ROOT / "model_repository"
    assert settings.triton_grpc == "127.0.0.1:8001" and settings.db_url == "sqlite:///shepherd.db"
    assert not settings.alerts.enabled  # no channel unless someone configures one
    for model in ("query_intent", "product_embedder", "ctr_ranker"):
        assert settings.policy_for(model).bake_seconds == settings.defaults.bake_seconds
    assert settings.policy_for("ctr_ranker").min_agreement is None
    assert settings.policy_for("some_other_model") == settings.defaults


def test_embedded_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env=NO_ENV)
    assert settings.source is None
    assert settings.repo == Path("model_repository")
    assert (settings.triton_grpc, settings.triton_metrics) == ("127.0.0.1:8001", "127.0.0.1:8002")
    assert settings.db_url == "sqlite:///shepherd.db"
    assert settings.defaults == Policy() and settings.models == {}
    assert settings.probe_interval_seconds == Policy().probe_interval_seconds


def test_precedence_command_line_over_environment_over_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "repo: /srv/models\ntriton_grpc: file-host:9001\ntriton_metrics: file-host:9002\ndb_url: sqlite:///file.db\n",
    )
    env = {"SHEPHERD_CONFIG": str(path), "SHEPHERD_TRITON_GRPC": "env-host:7001", "SHEPHERD_DB": "sqlite:///env.db"}
    settings = load_settings(env=env, overrides={"db_url": "postgresql+psycopg://postgres@127.0.0.1/test"})
    assert settings.source == path  # found through SHEPHERD_CONFIG
    assert settings.repo == Path("/srv/models")  # file
    assert settings.triton_metrics == "file-host:9002"  # file
    assert settings.triton_grpc == "env-host:7001"  # environment beats the file
    assert settings.db_url == "postgresql+psycopg://postgres@127.0.0.1/test"  # command line beats both
    assert load_settings(path, env={}, overrides={"repo": tmp_path, "db_url": None}).repo == tmp_path


def test_model_overrides_sit_on_top_of_the_file_defaults(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
defaults: {bake_seconds: 45, alpha: 0.005}
models:
  ctr_ranker:
    max_quality_drop: 0.01
    promotion_windows:
      - {day_of_week: mon-fri, hour: 9-16, timezone: Europe/Berlin}
      - {hour: 20}
""",
    )
    settings = load_settings(path, env=NO_ENV)
    ranker = settings.policy_for("ctr_ranker")
    assert (ranker.bake_seconds, ranker.alpha, ranker.max_quality_drop) == (45, 0.005, 0.01)
    assert ranker.promotion_windows == (
        PromotionWindow("mon-fri", "9-16", "Europe/Berlin"),
        PromotionWindow("*", "20", "UTC"),
    )
    assert settings.policy_for("query_intent").max_quality_drop == Policy().max_quality_drop


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour: blue\n", "colour: unknown key"),
        ("defaults: {max_error_rte: 0.5}\n", "defaults.max_error_rte: unknown key"),
        ("defaults: {bake_seconds: '30'}\n", "defaults.bake_seconds: expected a number"),
        ("defaults: {min_samples: 2.5}\n", "defaults.min_samples: expected a whole number"),
        ("defaults: {bake_seconds: -5}\n", "defaults.bake_seconds"),
        ("defaults: {bake_seconds: true}\n", "defaults.bake_seconds: expected a number"),
        ("models: {ctr_ranker: {drain_seconds: -1}}\n", "models.ctr_ranker.drain_seconds"),
        ("models: {ctr_ranker: {promotion_windows: [{hour: '25'}]}}\n", "models.ctr_ranker.promotion_windows[0]"),
        ("models: {ctr_ranker: {promotion_windows: [{minute: 5}]}}\n", "promotion_windows[0].minute: unknown key"),
        ("reconcile_interval_seconds: 0\n", "reconcile_interval_seconds: must be > 0"),
        ("triton_grpc: localhost\n", "triton_grpc: expected HOST:PORT"),
        ("db_url: 'not a url'\n", "db_url: not an SQLAlchemy URL"),
        ("alerts: {webhooks: [{url: 'ftp://x/y'}]}\n", "alerts.webhooks[0]"),
        ("alerts: {webhooks: [{url: 'http://x/y', format: teams}]}\n", "alerts.webhooks[0]"),
        ("alerts: {email: {host: smtp, port: 25, sender: a@b}}\n", "alerts.email.recipients: is required"),
        ("alerts: {retries: -1}\n", "alerts: retries"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("defaults: {bake_seconds: [\n", "not valid YAML"),
    ],
)
def test_bad_settings_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=NO_ENV)
    assert str(path) in str(info.value)
    assert key in str(info.value)


def test_bad_environment_and_command_line_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment SHEPHERD_TRITON_GRPC: triton_grpc: expected HOST:PORT"):
        load_settings(env={"SHEPHERD_TRITON_GRPC": "nohost", "SHEPHERD_CONFIG": str(_write(tmp_path, ""))})
    with pytest.raises(ConfigError, match="command line: tritn_grpc: unknown setting"):
        load_settings(_write(tmp_path, ""), env=NO_ENV, overrides={"tritn_grpc": "x:1"})
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(tmp_path / "missing.yaml", env=NO_ENV)


def test_alert_channels_with_secrets_from_the_environment(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
alerts:
  retries: 1
  webhooks:
    - {format: slack, url_env: SLACK_HOOK}
    - {name: ops, url: "http://127.0.0.1:9/hook"}
  email: {host: 127.0.0.1, port: 2525, sender: shepherd@example.com, recipients: oncall@example.com,
          username: bot, password_env: SMTP_PASSWORD}
""",
    )
    env = {"SLACK_HOOK": "https://hooks.slack.com/services/T000/B000/SECRET", "SMTP_PASSWORD": "hunter2"}
    alerts = load_settings(path, env=env).alerts
    assert alerts.retries == 1 and alerts.enabled
    assert alerts.webhooks[0].url.endswith("SECRET") and alerts.webhooks[0].format == "slack"
    assert "SECRET" not in alerts.webhooks[0].label  # deliveries are recorded under the label
    assert alerts.webhooks[1].label == "ops"
    assert alerts.email is not None and alerts.email.password == "hunter2"
    assert alerts.email.recipients == ("oncall@example.com",)
    with pytest.raises(ConfigError, match="SLACK_HOOK is not set"):
        load_settings(path, env={"SMTP_PASSWORD": "x"})
