"""The page at ``/``: submit jobs and watch them, through the public API and ``errand.js``."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("page", __name__)
