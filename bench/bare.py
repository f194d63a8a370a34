"""The ceiling: a bare Flask route under the same gunicorn settings as Errand."""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/ok")
def ok() -> dict[str, bool]:
    return {"ok": True}


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
