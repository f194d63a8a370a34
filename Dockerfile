# One image for every Errand process; the command picks which:
#   API:    (default) gunicorn -c gunicorn.conf.py wsgi:app
#   worker: celery -A worker:celery_app worker -l INFO
#   beat:   celery -A worker:celery_app beat -l INFO -s /tmp/celerybeat-schedule
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUNICORN_BIND=0.0.0.0:8000

RUN useradd --create-home --uid 10001 errand
WORKDIR /srv/errand

COPY pyproject.toml README.md config.py worker.py wsgi.py gunicorn.conf.py ./
COPY app ./app
RUN pip install --no-cache-dir .

USER 10001
EXPOSE 8000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
