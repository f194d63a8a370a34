"""Entry point for Celery: ``celery -A worker:celery_app worker`` (or ``beat``)."""

from app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
