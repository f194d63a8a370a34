"""The ``flask`` commands: ``flask --app wsgi keys create|list|revoke``."""

from __future__ import annotations

import click
from flask import Flask

from app import store
from app.store import apikeys


@click.group("keys")
def keys_cli() -> None:
    """Create, list and revoke API keys."""


@keys_cli.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="an admin key sees every task and the operator routes")
def create_command(name: str, admin: bool) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    key = apikeys.create_key(store.client(), name, admin)
    click.echo(key)
    click.echo("Keep it now: Errand stores only its hash and cannot show it again.", err=True)


@keys_cli.command("list")
def list_command() -> None:
    """List keys: id, name, role, created and revoked times."""
    for key in apikeys.list_keys(store.client()):
        role = "admin" if key.get("admin") == "1" else "user"
        revoked = f"revoked {key['revoked_at']}" if key.get("revoked_at") else "active"
        click.echo(
            f"{key['id']}  {key.get('name', '')}  {role}  {key.get('created_at')}  {revoked}"
        )


@keys_cli.command("revoke")
@click.argument("key_id")
def revoke_command(key_id: str) -> None:
    """Revoke a key by its id (the part after ``erd_``)."""
    if not apikeys.revoke_key(store.client(), key_id):
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"revoked {key_id}")


def init_app(app: Flask) -> None:
    """Add Errand's commands to ``flask``."""
    app.cli.add_command(keys_cli)
