"""The ``flask`` commands: ``flask --app wsgi keys create|list|revoke``.

They use the Redis the application uses, so ``REDIS_URL`` (and the rest of the
environment) is read exactly as for the API.
"""

from __future__ import annotations

import json

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from app import store
from app.store import apikeys

COLUMNS = ("id", "name", "role", "created_at", "state")
HEADER = ("ID", "NAME", "ROLE", "CREATED", "STATE")


# An AppGroup: each command runs in an application context, under `flask` and in tests.
keys_cli = AppGroup("keys", help="Create, list and revoke API keys.")


@keys_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="an admin key sees every task and the operator routes")
def create_command(name: str, admin: bool) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    key = apikeys.create_key(store.client(), name, admin)
    click.echo(key)
    click.echo("Keep it now: Errand stores only its hash and cannot show it again.", err=True)


def _described(key: dict[str, str]) -> dict[str, str | None]:
    revoked = key.get("revoked_at") or None
    return {
        "id": key["id"],
        "name": key.get("name", ""),
        "role": "admin" if key.get("admin") == "1" else "user",
        "created_at": key.get("created_at", ""),
        "revoked_at": revoked,
        "state": f"revoked {revoked}" if revoked else "active",
    }


@keys_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="a JSON list of objects instead of a table")
def list_command(as_json: bool) -> None:
    """List keys, oldest first: id, name, role, created and state (never a key or its hash).

    The ID is what 'keys revoke' takes.
    """
    listed = apikeys.list_keys(store.client())
    listed.sort(
        key=lambda key: (int(key.get("created_us") or 0), key["created_at"] or "", key["id"])
    )
    found = [_described(key) for key in listed]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = [HEADER, *[tuple(str(key[c] or "") for c in COLUMNS) for key in found]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@keys_cli.command("revoke")
@click.argument("key")
def revoke_command(key: str) -> None:
    """Revoke KEY: its ID, as 'keys list' shows it, or the whole key (erd_<id>_<secret>).

    API processes refuse it within KEY_CACHE_SECONDS. A key already revoked stays as it is.
    """
    key_id = key.split("_", 2)[1] if key.startswith("erd_") else key
    client = store.client()
    record = apikeys.lookup(client, key_id)
    if not record:
        raise click.ClickException(f"no key {key_id} (keys list shows every id)")
    name = record.get("name", "")
    if record.get("revoked_at"):
        click.echo(f"{key_id} ({name}) is already revoked, since {record['revoked_at']}")
        return
    apikeys.revoke_key(client, key_id)
    seconds = current_app.config["KEY_CACHE_SECONDS"]
    click.echo(f"revoked {key_id} ({name}): refused by every API process within {seconds:g} s")


def init_app(app: Flask) -> None:
    """Add Errand's commands to ``flask``."""
    app.cli.add_command(keys_cli)
