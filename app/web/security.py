"""Security headers on every answer, and CORS only for the origins configured."""

from __future__ import annotations

from flask import Flask, Response
from flask_cors import CORS

SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    # The API serves no HTML; should a browser render an answer, it may run nothing.
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
]
NO_STORE = "private, no-store"


def add_security_headers(response: Response) -> None:
    """Headers that keep browsers and shared caches from misusing an answer."""
    response.headers.extend(SECURITY_HEADERS)
    if "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = NO_STORE


def init_app(app: Flask) -> None:
    """CORS when ``CORS_ORIGINS`` names origins (the headers are added by ``app.web``)."""
    if app.config["CORS_ORIGINS"]:
        CORS(
            app,
            origins=app.config["CORS_ORIGINS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["Location", "Retry-After", "RateLimit", "RateLimit-Policy"],
            methods=["GET", "POST", "DELETE"],
        )
