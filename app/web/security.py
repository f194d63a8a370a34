"""Security headers on every answer, and CORS only for the origins configured."""

from __future__ import annotations

from flask import Flask, Response
from flask_cors import CORS


def add_security_headers(response: Response) -> Response:
    """Headers that keep browsers and shared caches from misusing an answer."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    # The API serves no HTML; should a browser render an answer, it may run nothing.
    response.headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
    response.headers.setdefault("Cache-Control", "no-store")
    if "no-store" in response.headers["Cache-Control"]:
        response.headers["Cache-Control"] = "private, no-store"
    return response


def init_app(app: Flask) -> None:
    """Security headers always; CORS when ``CORS_ORIGINS`` names origins."""
    app.after_request(add_security_headers)
    if app.config["CORS_ORIGINS"]:
        CORS(
            app,
            origins=app.config["CORS_ORIGINS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["Location", "Retry-After", "RateLimit", "RateLimit-Policy"],
            methods=["GET", "POST", "DELETE"],
        )
