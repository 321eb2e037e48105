"""Connection settings and per-model policies, from shepherd.yaml, the environment and the command line.

Precedence, highest first: command-line overrides > environment (SHEPHERD_REPO, SHEPHERD_TRITON_GRPC,
SHEPHERD_TRITON_METRICS, SHEPHERD_DB; SHEPHERD_CONFIG names the file) > shepherd.yaml > the embedded
defaults below, so `shepherd tick` works on a fresh clone with no file at all.

The key of Triton's restricted repository API (see `shepherd triton start --api-key-env`), highest
first: the environment variable SHEPHERD_TRITON_API_KEY itself > `triton_api_key_env: NAME` in
shepherd.yaml, naming the environment variable that holds it (an unset NAME is a ConfigError) >
none (no header is sent). The key is never written in shepherd.yaml, never on the command line and
never in Settings' repr.

gRPC over TLS to every replica of the fleet (repository API, index, probes): `triton_tls:
{ca_file, cert_file, key_file, server_name}` in shepherd.yaml, each key overridden by its
environment variable (SHEPHERD_TRITON_TLS_CA, _CERT, _KEY, _SERVER_NAME); TLS is on when the
mapping is given (even empty: the system's trust store) or any of those variables is set.
`cert_file` and `key_file` (a client certificate, for a Triton with mutual TLS) go together. The
files are read once, here: a missing, unreadable or non-PEM file is a ConfigError naming the key
(never quoting the file); the private key is never in Settings' repr. A relative path in the file
is taken relative to the file's folder, one from the environment relative to the working directory.

Why strict: a typo in a threshold (`max_error_rte: 0.5`) silently ignored would judge every rollout
with the default; so an unknown key, a wrong type, a negative duration or a bad cron field is a
ConfigError naming the file and the key, and nothing starts. Only `yaml.safe_load` is used.
"""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from control_plane.alerts.channels import AlertSettings, EmailChannel, WebhookChannel
from control_plane.errors import ConfigError
from control_plane.fleet import FLEET_ENV, Fleet, MetricsSource, parse_fleet, parse_metrics, read_fleet_file, single
from control_plane.policy import POLICY_FIELDS, Policy, PromotionWindow
from probes.channel import GrpcTls
from probes.errors import ProbeFailed

DEFAULT_REPO = "model_repository"
DEFAULT_GRPC = "127.0.0.1:8001"
DEFAULT_METRICS = "127.0.0.1:8002"
DEFAULT_DB = "sqlite:///shepherd.db"
DEFAULT_RECONCILE_INTERVAL = 5.0
DEFAULT_CONFIG = Path("shepherd.yaml")
CONFIG_ENV = "SHEPHERD_CONFIG"
API_KEY_ENV = "SHEPHERD_TRITON_API_KEY"
PUBLIC_URL_ENV = "SHEPHERD_PUBLIC_URL"
TLS_ENVIRONMENT = {
    "ca_file": "SHEPHERD_TRITON_TLS_CA",
    "cert_file": "SHEPHERD_TRITON_TLS_CERT",
    "key_file": "SHEPHERD_TRITON_TLS_KEY",
    "server_name": "SHEPHERD_TRITON_TLS_SERVER_NAME",
}
TLS_KEYS = frozenset(TLS_ENVIRONMENT)
ENVIRONMENT = {
    "repo": "SHEPHERD_REPO",
    "triton_grpc": "SHEPHERD_TRITON_GRPC",
    "triton_metrics": "SHEPHERD_TRITON_METRICS",
    "db_url": "SHEPHERD_DB",
}
CONNECTION_KEYS = ("repo", "triton_grpc", "triton_metrics", "db_url")
INTERVAL_KEYS = ("reconcile_interval_seconds", "probe_interval_seconds")
TOP_LEVEL_KEYS = frozenset(
    {*CONNECTION_KEYS, *INTERVAL_KEYS, "defaults", "models", "alerts", "triton_api_key_env", "fleet", "metrics"}
    | {"triton_tls"}
    | {"public_url"}
)
WINDOW_KEYS = frozenset({"day_of_week", "hour", "timezone"})
ALERT_KEYS = frozenset({"webhooks", "email", "retries", "backoff_seconds", "timeout_seconds", "deadline_seconds"})
WEBHOOK_KEYS = frozenset({"url", "url_env", "format", "name"})
EMAIL_KEYS = frozenset({"host", "port", "sender", "recipients", "starttls", "username", "password", "password_env"})


@dataclass(frozen=True)
class Settings:
    """Everything one shepherd process needs to know before it starts."""

    repo: Path
    triton_grpc: str
    triton_metrics: str
    db_url: str
    reconcile_interval_seconds: float
    probe_interval_seconds: float
    alerts: AlertSettings
    defaults: Policy
    models: dict[str, Policy]
    source: Path | None = None  # the shepherd.yaml read, if any
    triton_api_key: str | None = field(default=None, repr=False)  # a secret: never in repr
    triton_tls: GrpcTls | None = None  # gRPC over TLS to every replica; its repr shows no key
    fleet_spec: Fleet | None = None  # None: the one Triton of triton_grpc / triton_metrics
    metrics: MetricsSource = field(default_factory=MetricsSource)
    load_balancer: dict[str, str] = field(default_factory=dict)  # where clients reach the fleet (informational)
    public_url: str | None = None  # where people reach `shepherd serve` (alerts link to its console pages)

    @property
    def fleet(self) -> Fleet:
        """The replicas to drive: the fleet given, else the degenerate fleet of the plain settings."""
        return self.fleet_spec if self.fleet_spec is not None else single(self.triton_grpc, self.triton_metrics)

    def policy_for(self, model: str) -> Policy:
        """The model's own policy (its overrides on top of `defaults`), else the defaults."""
        return self.models.get(model, self.defaults)


# -- typed reading of plain values -----------------------------------------------------------
def _fail(where: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{where}: {key}: {problem}")


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, key, f"expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise _fail(where, key, f"expected a finite number, got {value!r}")
    return float(value)


def _whole(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, key, f"expected a whole number, got {type(value).__name__} {value!r}")
    return value


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, key, f"expected a non-empty string, got {type(value).__name__} {value!r}")
    return value.strip()


def _flag(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, key, f"expected true or false, got {type(value).__name__} {value!r}")
    return value


def _mapping(value: Any, where: str, key: str, allowed: frozenset[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(where, key, f"expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise _fail(
            where, f"{key}.{unknown[0]}" if key else unknown[0], f"unknown key (known: {', '.join(sorted(allowed))})"
        )
    return dict(value)


def _sequence(value: Any, where: str, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, key, f"expected a list, got {type(value).__name__}")
    return value


# -- policies ---------------------------------------------------------------------------------
_POLICY_HINTS = typing.get_type_hints(Policy)


def _window(value: Any, where: str, key: str) -> PromotionWindow:
    data = _mapping(value, where, key, WINDOW_KEYS)
    texts = {}
    for name, raw in data.items():
        cron_number = isinstance(raw, int) and not isinstance(raw, bool)  # `hour: 9` is a cron field too
        texts[name] = _text(str(raw) if cron_number else raw, where, f"{key}.{name}")
    try:
        return PromotionWindow(**texts)
    except ConfigError as exc:
        raise _fail(where, key, str(exc)) from exc


def parse_policy(data: Any, *, base: Policy, where: str, key: str) -> Policy:
    """`base` with the fields given in `data` (a mapping from shepherd.yaml) replaced, type-checked."""
    values = _mapping(data, where, key, POLICY_FIELDS)
    changes: dict[str, Any] = {}
    for name, value in values.items():
        path = f"{key}.{name}"
        hint = _POLICY_HINTS[name]
        optional = type(None) in typing.get_args(hint)
        if value is None:
            if not optional:
                raise _fail(where, path, "must be set (null is not allowed here)")
            changes[name] = None
        elif name == "canary_steps":
            changes[name] = tuple(_sequence(value, where, path))
        elif name == "strategy":
            changes[name] = _text(value, where, path)
        elif name == "promotion_windows":
            changes[name] = tuple(
                _window(item, where, f"{path}[{i}]") for i, item in enumerate(_sequence(value, where, path))
            )
        elif hint is int:
            changes[name] = _whole(value, where, path)
        else:
            changes[name] = _number(value, where, path)
    try:
        return replace(base, **changes)
    except ConfigError as exc:
        field = next((n for n in changes if str(exc).startswith(n)), None)
        raise _fail(where, f"{key}.{field}" if field else key, str(exc)) from exc


# -- alerts -----------------------------------------------------------------------------------
def _secret(data: dict[str, Any], name: str, where: str, key: str, env: Mapping[str, str]) -> str | None:
    """`name` given inline, or `name_env` naming an environment variable that holds it (keeps secrets out of the file)."""
    inline, env_name = data.get(name), data.get(f"{name}_env")
    if inline is not None and env_name is not None:
        raise _fail(where, f"{key}.{name}_env", f"give either {name} or {name}_env, not both")
    if env_name is not None:
        variable = _text(env_name, where, f"{key}.{name}_env")
        if variable not in env:
            raise _fail(where, f"{key}.{name}_env", f"environment variable {variable} is not set")
        return env[variable]
    return None if inline is None else _text(inline, where, f"{key}.{name}")


def parse_alerts(data: Any, *, where: str, env: Mapping[str, str]) -> AlertSettings:
    values = _mapping(data, where, "alerts", ALERT_KEYS)
    hooks: list[WebhookChannel] = []
    for i, item in enumerate(_sequence(values.get("webhooks"), where, "alerts.webhooks")):
        key = f"alerts.webhooks[{i}]"
        hook = _mapping(item, where, key, WEBHOOK_KEYS)
        url = _secret(hook, "url", where, key, env)
        if url is None:
            raise _fail(where, f"{key}.url", "a webhook needs url (or url_env)")
        try:
            hooks.append(
                WebhookChannel(
                    url=url,
                    format=_text(hook.get("format", "generic"), where, f"{key}.format"),
                    name=_text(hook["name"], where, f"{key}.name") if hook.get("name") is not None else None,
                )
            )
        except ConfigError as exc:
            raise _fail(where, key, str(exc)) from exc
    email = None
    if values.get("email") is not None:
        key = "alerts.email"
        mail = _mapping(values["email"], where, key, EMAIL_KEYS)
        for required in ("host", "port", "sender", "recipients"):
            if mail.get(required) is None:
                raise _fail(where, f"{key}.{required}", "is required")
        recipients = mail["recipients"]
        recipients = [recipients] if isinstance(recipients, str) else _sequence(recipients, where, f"{key}.recipients")
        try:
            email = EmailChannel(
                host=_text(mail["host"], where, f"{key}.host"),
                port=_whole(mail["port"], where, f"{key}.port"),
                sender=_text(mail["sender"], where, f"{key}.sender"),
                recipients=tuple(_text(r, where, f"{key}.recipients") for r in recipients),
                starttls=_flag(mail.get("starttls", False), where, f"{key}.starttls"),
                username=_text(mail["username"], where, f"{key}.username") if mail.get("username") else None,
                password=_secret(mail, "password", where, key, env),
            )
        except ConfigError as exc:
            if str(exc).startswith(where):
                raise
            raise _fail(where, key, str(exc)) from exc
    numbers: dict[str, Any] = {}
    if values.get("retries") is not None:
        numbers["retries"] = _whole(values["retries"], where, "alerts.retries")
    for name in ("backoff_seconds", "timeout_seconds", "deadline_seconds"):
        if values.get(name) is not None:
            numbers[name] = _number(values[name], where, f"alerts.{name}")
    try:
        return AlertSettings(webhooks=tuple(hooks), email=email, **numbers)
    except ConfigError as exc:
        raise _fail(where, "alerts", str(exc)) from exc


# -- connection settings ----------------------------------------------------------------------
def _address(value: str, where: str, key: str) -> str:
    """HOST:PORT (a metrics endpoint may also be a full http(s) URL)."""
    if key == "triton_metrics" and value.startswith(("http://", "https://")):
        return value
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(where, key, f"expected HOST:PORT, got {value!r}")
    return value


def _connection(key: str, value: Any, where: str) -> Any:
    if key == "repo":
        return Path(value) if isinstance(value, Path) else Path(_text(value, where, key))
    text = _text(str(value) if isinstance(value, Path) else value, where, key)
    if key == "db_url":
        try:
            make_url(text)
        except (ArgumentError, ValueError) as exc:
            raise _fail(where, key, f"not an SQLAlchemy URL ({exc})") from exc
        return text
    return _address(text, where, key)


def _interval(value: Any, where: str, key: str) -> float:
    number = _number(value, where, key)
    if number <= 0:
        raise _fail(where, key, f"must be > 0 seconds, got {number:g}")
    return number


def _config_path(path: Path | None, env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The file to read and whether it was asked for (an asked-for file that is missing is an error)."""
    if path is not None:
        return Path(path), True
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]), True
    return (DEFAULT_CONFIG, False) if DEFAULT_CONFIG.is_file() else (None, False)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the settings file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _pem(path: Path, where: str, key: str, kind: str) -> bytes:
    """The PEM file's bytes; ConfigError naming the key (never quoting the file) when it cannot serve as `kind`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(where, key, f"cannot read {path} ({exc.strerror or exc})") from exc
    if kind == "key":
        if b"ENCRYPTED PRIVATE KEY" in raw or b"Proc-Type: 4,ENCRYPTED" in raw:
            raise _fail(where, key, f"{path} holds an encrypted private key; gRPC needs it unencrypted (PEM)")
        if b"PRIVATE KEY-----" not in raw:
            raise _fail(where, key, f"{path} holds no PEM private key")
    elif b"-----BEGIN CERTIFICATE-----" not in raw:
        raise _fail(where, key, f"{path} holds no PEM certificate")
    return raw


def _tls(data: dict[str, Any], where: str, file: Path | None, env: Mapping[str, str]) -> GrpcTls | None:
    """`triton_tls` from shepherd.yaml, each key overridden by its environment variable; None: plaintext."""
    given = data.get("triton_tls")
    values = _mapping(given, where, "triton_tls", TLS_KEYS)
    origin = dict.fromkeys(values, where)
    for key, variable in TLS_ENVIRONMENT.items():
        if env.get(variable):
            values[key], origin[key] = env[variable], f"environment {variable}"
    if given is None and not any(env.get(v) for v in TLS_ENVIRONMENT.values()):
        return None
    found: dict[str, Any] = {}
    for key, kind in (("ca_file", "certificate"), ("cert_file", "certificate"), ("key_file", "key")):
        if values.get(key) is None:
            continue
        path = Path(_text(values[key], origin[key], f"triton_tls.{key}"))
        if origin[key] == where and file is not None and not path.is_absolute():
            path = file.parent / path
        found[key] = _pem(path, origin[key], f"triton_tls.{key}", kind)
    if ("cert_file" in found) != ("key_file" in found):
        missing = "key_file" if "cert_file" in found else "cert_file"
        problem = "a client certificate and its key go together: give both or neither"
        raise _fail(origin.get(missing, where), f"triton_tls.{missing}", problem)
    name = values.get("server_name")
    try:
        return GrpcTls(
            root_certificates=found.get("ca_file"),
            certificate_chain=found.get("cert_file"),
            private_key=found.get("key_file"),
            server_name=_text(name, origin["server_name"], "triton_tls.server_name") if name is not None else None,
        )
    except ProbeFailed as exc:
        raise _fail(origin.get("server_name", where), "triton_tls.server_name", str(exc)) from exc


def _fleet(
    data: dict[str, Any], where: str, fleet_file: Any, env: Mapping[str, str], overrides: dict[str, Any]
) -> tuple[Fleet | None, MetricsSource, dict[str, str]]:
    """The fleet and its metrics source, highest first: `--fleet FILE` > SHEPHERD_FLEET > a single Triton
    given on the command line or in the environment > `fleet:` in shepherd.yaml > the plain settings.

    A fleet file's own `metrics:` wins over shepherd.yaml's (it was named on the command line or in
    the environment, which rank above the file).
    """
    metrics = (
        parse_metrics(data["metrics"], f"{where}: metrics") if data.get("metrics") is not None else MetricsSource()
    )
    path = fleet_file or env.get(FLEET_ENV)
    if path:
        read = read_fleet_file(Path(path))
        return read.fleet, read.metrics or metrics, read.load_balancer
    single_given = any(overrides.get(k) for k in ("triton_grpc", "triton_metrics")) or any(
        env.get(ENVIRONMENT[k]) for k in ("triton_grpc", "triton_metrics")
    )
    if data.get("fleet") is not None and not single_given:
        return parse_fleet(data["fleet"], f"{where}: fleet"), metrics, {}
    return None, metrics, {}


def load_settings(
    path: Path | None = None, *, overrides: dict[str, Any] | None = None, env: Mapping[str, str] = os.environ
) -> Settings:
    """Settings from `path` (else $SHEPHERD_CONFIG, else ./shepherd.yaml when present), the environment and `overrides`.

    A relative `repo` in the file is taken relative to the file's folder; one from the environment
    or the command line relative to the working directory.

        load_settings(overrides={"db_url": "postgresql+psycopg://postgres@127.0.0.1/test"})
    """
    file, asked = _config_path(path, env)
    data: dict[str, Any] = {}
    if file is not None:
        if not file.is_file():
            if asked:
                raise ConfigError(f"{file}: settings file not found")
        else:
            data = _read_yaml(file)
    where = str(file) if file is not None else "embedded defaults"
    unknown = sorted(str(k) for k in data if k not in TOP_LEVEL_KEYS)
    if unknown:
        raise _fail(where, unknown[0], f"unknown key (known: {', '.join(sorted(TOP_LEVEL_KEYS))})")

    connection: dict[str, Any] = {
        "repo": Path(DEFAULT_REPO),
        "triton_grpc": DEFAULT_GRPC,
        "triton_metrics": DEFAULT_METRICS,
        "db_url": DEFAULT_DB,
    }
    for key in CONNECTION_KEYS:
        if data.get(key) is not None:
            value = _connection(key, data[key], where)
            if key == "repo" and file is not None and not value.is_absolute():
                value = file.parent / value
            connection[key] = value
    for key, variable in ENVIRONMENT.items():
        if env.get(variable):
            connection[key] = _connection(key, env[variable], f"environment {variable}")

    defaults = parse_policy(data.get("defaults"), base=Policy(), where=where, key="defaults")
    models_data = data.get("models")
    if models_data is not None and not isinstance(models_data, dict):
        raise _fail(where, "models", f"expected a mapping of model name to policy, got {type(models_data).__name__}")
    models = {
        str(name): parse_policy(body, base=defaults, where=where, key=f"models.{name}")
        for name, body in (models_data or {}).items()
    }
    intervals: dict[str, float] = {
        "reconcile_interval_seconds": DEFAULT_RECONCILE_INTERVAL,
        "probe_interval_seconds": min(p.probe_interval_seconds for p in (defaults, *models.values())),
    }
    for key in INTERVAL_KEYS:
        if data.get(key) is not None:
            intervals[key] = _interval(data[key], where, key)

    overrides = dict(overrides or {})
    fleet_file = overrides.pop("fleet", None)
    known = set(CONNECTION_KEYS) | set(INTERVAL_KEYS)
    for key, value in overrides.items():
        if key not in known:
            raise _fail("command line", key, f"unknown setting (known: {', '.join(sorted(known))})")
        if value is None:
            continue
        if key in CONNECTION_KEYS:
            connection[key] = _connection(key, value, "command line")
        else:
            intervals[key] = _interval(value, "command line", key)

    api_key = env.get(API_KEY_ENV) or None
    if api_key is None and data.get("triton_api_key_env") is not None:
        variable = _text(data["triton_api_key_env"], where, "triton_api_key_env")
        if not env.get(variable):
            raise _fail(where, "triton_api_key_env", f"environment variable {variable} is not set")
        api_key = env[variable]

    fleet, metrics, balancer = _fleet(data, where, fleet_file, env, overrides)
    return Settings(
        fleet_spec=fleet,
        metrics=metrics,
        load_balancer=balancer,
        repo=connection["repo"],
        triton_grpc=connection["triton_grpc"],
        triton_metrics=connection["triton_metrics"],
        db_url=connection["db_url"],
        reconcile_interval_seconds=intervals["reconcile_interval_seconds"],
        probe_interval_seconds=intervals["probe_interval_seconds"],
        alerts=parse_alerts(data.get("alerts"), where=where, env=env),
        defaults=defaults,
        models=models,
        source=file if file is not None and file.is_file() else None,
        triton_api_key=api_key,
        triton_tls=_tls(data, where, file, env),
        public_url=_public_url(data, where, env),
    )


def _public_url(data: dict[str, Any], where: str, env: Mapping[str, str]) -> str | None:
    """`public_url` (SHEPHERD_PUBLIC_URL first): http(s)://host[/prefix] where `shepherd serve` is reached."""
    value, origin = env.get(PUBLIC_URL_ENV) or data.get("public_url"), where
    if env.get(PUBLIC_URL_ENV):
        origin = f"environment {PUBLIC_URL_ENV}"
    if value is None:
        return None
    text = _text(value, origin, "public_url").rstrip("/")
    if not text.startswith(("http://", "https://")) or len(text.split("/")[2]) == 0:
        raise _fail(origin, "public_url", f"expected http(s)://host[:port][/path], got {text!r}")
    return text
