"""kombu's Redis transport, with one repair for a broker that went away.

When the Redis connection breaks, Celery closes the channel, and kombu 5.7's
``Channel.close`` tries to put back the messages the worker still holds after
it has already dropped its connection pool: the ``AttributeError`` that
follows kills the worker ("Unrecoverable error"). Here that restore failure
is logged instead; the messages stay in kombu's ``unacked`` set in Redis and
come back on their own after ``visibility_timeout``, as for a crashed worker.

Used for ``redis://`` and ``rediss://`` brokers through ``broker_transport``.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """Redis QoS whose restore at close survives a connection that is already gone."""

    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except (AttributeError, redis.RedisError, OSError) as exc:
            log.warning(
                "could not return %d held messages at close (%s); "
                "they come back after the visibility timeout",
                len(self._delivered),
                exc,
            )
            self._delivered.clear()


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
