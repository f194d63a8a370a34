"""The page at ``/``: submit jobs and watch them, through the public API and ``errand.js``."""

from __future__ import annotations

from functools import cache
from importlib import resources

from flask import Blueprint, Response

bp = Blueprint("page", __name__)

# Only the page's own files: no inline script or style, nothing from elsewhere.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@cache
def _html() -> bytes:
    return resources.files("app").joinpath("static/index.html").read_bytes()


@bp.get("/")
def index() -> Response:
    """The page (``app/static/index.html``, with ``page.js``, ``page.css`` and ``errand.js``)."""
    response = Response(_html(), mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    response.headers["Cache-Control"] = "no-cache"
    return response
