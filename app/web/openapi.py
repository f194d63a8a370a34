"""The contract as OpenAPI 3.1 (``/api/v1/openapi.json``), rendered at ``/docs``."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("openapi", __name__)
