# One image for every Errand process; the command picks which (compose.yaml runs all four):
#   API:    (default) gunicorn -c gunicorn.conf.py wsgi:app
#   worker: celery -A worker:celery_app worker -l INFO
#   beat:   celery -A worker:celery_app beat -l INFO   (its schedules and lock in Redis)
#   a key:  flask --app wsgi keys create admin --admin
# The HEALTHCHECK is the API's: give the worker and beat their own (compose.yaml does).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUNICORN_BIND=0.0.0.0:8000

RUN useradd --create-home --uid 10001 errand
WORKDIR /srv/errand

# The locked, hashed packages first (this layer is kept until the lock changes), then Errand.
COPY requirements/main.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes -r requirements/main.txt
COPY pyproject.toml README.md config.py worker.py wsgi.py gunicorn.conf.py ./
COPY app ./app
RUN pip install --no-cache-dir --no-deps .

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('GUNICORN_BIND', ':8000').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
