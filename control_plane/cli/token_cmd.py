"""`shepherd token create|list|revoke`: the bearer tokens of `shepherd serve`, managed on the database.

    shepherd token create --name alice --role operator     # prints the token once, on stdout alone
    export SHEPHERD_TOKEN=$(shepherd token create --name ci --role viewer)
    shepherd token list [--json]
    shepherd token revoke 3

Only the token's SHA-256 is stored; a lost token cannot be shown again: revoke it and make another.
Roles: viewer (reads) < operator (promote, rollback, pin) < admin (tokens over the API).
The database comes from `--db`, else SHEPHERD_DB, else shepherd.yaml, else sqlite:///shepherd.db.
"""

from __future__ import annotations

from typing import Annotated

import typer

from control_plane.api.tokens import ROLES, TokenRecord, Tokens
from control_plane.cli.output import error_console, print_json, print_table
from control_plane.cli.rollout_cmd import Config, Db, Json, _actor
from control_plane.errors import ConfigError
from control_plane.settings import load_settings
from control_plane.store.store import Store
from control_plane.store.values import iso

app = typer.Typer(
    help="API tokens of `shepherd serve`: create (shown once), list, revoke.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _store(config: Config, db: Db) -> Store:
    return Store.open(load_settings(config, overrides={"db_url": db}).db_url)


def _as_dict(t: TokenRecord) -> dict[str, object]:
    return {
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created_at": iso(t.created_at),
        "created_by": t.created_by,
        "last_used_at": iso(t.last_used_at),
        "revoked_at": iso(t.revoked_at),
    }


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="The owner: recorded as the actor of each action made with it.")],
    role: Annotated[str, typer.Option("--role", help=f"One of {', '.join(ROLES)}.")],
    config: Config = None,
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Make a token and print it, once (only its SHA-256 is stored)."""
    with _store(config, db) as store:
        made = Tokens(store.db).create(name=name, role=role, created_by=f"cli:{_actor(None)}")
    if as_json:
        print_json({**_as_dict(made.record), "token": made.token})
        return
    print(made.token, flush=True)
    error_console.print(
        f"token {made.record.id} for {made.record.name} ({made.record.role}): shown this once, stored only as its "
        "SHA-256. Give it to its holder as SHEPHERD_TOKEN; revoke it with `shepherd token revoke "
        f"{made.record.id}`.",
        highlight=False,
        markup=False,
    )


@app.command("list")
def list_tokens(config: Config = None, db: Db = None, as_json: Json = False) -> None:
    """Every token: id, owner, role, when made and last used, whether revoked."""
    with _store(config, db) as store:
        tokens = Tokens(store.db).list()
    if as_json:
        print_json([_as_dict(t) for t in tokens])
        return
    print_table(
        "API tokens",
        ["id", "name", "role", "created (UTC)", "by", "last used (UTC)", "revoked (UTC)"],
        [
            (
                t.id,
                t.name,
                t.role,
                _short(t.created_at.isoformat()),
                t.created_by,
                _short(iso(t.last_used_at)),
                _short(iso(t.revoked_at)),
            )
            for t in tokens
        ],
    )


@app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (see `shepherd token list`).")],
    config: Config = None,
    db: Db = None,
    as_json: Json = False,
) -> None:
    """Revoke a token: the API refuses it from now on (it stays listed)."""
    with _store(config, db) as store:
        record = Tokens(store.db).revoke(token_id)
    if record is None:
        raise ConfigError(f"no API token {token_id} (see `shepherd token list`)")
    if as_json:
        print_json(_as_dict(record))
    else:
        print(f"token {record.id} ({record.name}, {record.role}) revoked", flush=True)


def _short(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else ""
