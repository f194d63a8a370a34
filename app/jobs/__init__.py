"""The life of a job, as one service with no Flask in it: submit, status, cancel,
resubmit, list. ``app.web`` calls it with the caller's ``Principal``.

Round trips to Redis, per call (the rate limiter's, in ``app.web.limits``, come
on top; an API key is checked from a short cache, ``app.web.auth``):
- ``submit``: two, the broker publish and one script that writes the record and
  its indexes (the publish comes first, see ``Jobs.submit``); one more to
  reserve a place in flight when keys are on, one more with an Idempotency-Key.
- ``status``: one pipeline (the record, its owner, and Celery's result).
- ``cancel``: a status read, one script, Celery's store of ``REVOKED`` and the
  revoke broadcast.
- ``list``: one pipeline per page of the index, plus one for the records.
"""

from app.jobs.service import Jobs, Principal

__all__ = ["Jobs", "Principal"]
