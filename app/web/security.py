"""Security headers on every answer, and CORS only for the origins configured."""

from __future__ import annotations

from flask import Flask, Response
from flask_cors import CORS

SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]
# API answers are JSON: should a browser render one, it may run nothing. The page
# and the docs set a policy of their own, which is kept.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
NO_STORE = "private, no-store"
# What add_security_headers adds to an answer that set neither policy (app.web.fast's).
API_HEADERS = [
    *SECURITY_HEADERS,
    ("Content-Security-Policy", API_POLICY),
    ("Cache-Control", NO_STORE),
]


def add_security_headers(response: Response) -> None:
    """Headers that keep browsers and shared caches from misusing an answer."""
    headers = response.headers
    headers.extend(SECURITY_HEADERS)
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = API_POLICY
    if "Cache-Control" not in headers:
        headers["Cache-Control"] = NO_STORE


def init_app(app: Flask) -> None:
    """CORS when ``CORS_ORIGINS`` names origins (the headers are added by ``app.web``)."""
    if app.config["CORS_ORIGINS"]:
        CORS(
            app,
            origins=app.config["CORS_ORIGINS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-None-Match",
                "Last-Event-ID",
                "X-Request-ID",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "Retry-After",
                "RateLimit",
                "RateLimit-Policy",
                "X-Request-ID",
            ],
            methods=["GET", "POST", "DELETE"],
        )
