"""Extension objects, created unbound and bound by ``create_app``."""

from __future__ import annotations

from flask_mail import Mail

mail = Mail()
