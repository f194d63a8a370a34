"""The life of a job, as one service with no Flask in it: submit, status, cancel,
resubmit, list. ``app.web`` calls it with the caller's ``Principal``.

Round trips to Redis, per call, rate limit included (an API key is checked
from a short cache, ``app.web.auth``):
- ``submit``: one script (``submit.lua``) when the broker is the task store's
  Redis; elsewhere (RabbitMQ) the rate window, the broker publish and one
  script that writes the record, plus one to reserve a place in flight when
  keys are on and one more with an Idempotency-Key.
- ``read`` (a status): one script (``status.lua``).
- ``cancel``: a status read, one script, Celery's store of ``REVOKED`` and the
  revoke broadcast.
- ``list``: one pipeline per page of the index, plus one for the records.
"""

from app.jobs.service import Jobs, Principal

__all__ = ["Jobs", "Principal"]
