"""kombu's Redis transport, with one repair for a broker that went away.

When the Redis connection breaks, Celery closes the channel, and kombu 5.7's
``Channel.close`` tries to put back the messages the worker still holds after
it has already dropped its connection pool: the ``AttributeError`` that
follows kills the worker ("Unrecoverable error"). Here that restore failure
is logged instead; the messages stay in kombu's ``unacked`` set in Redis and
come back on their own after ``visibility_timeout``, as for a crashed worker.

And a gevent worker takes new jobs as soon as it has room (``Poller``).

Used for ``redis://`` and ``rediss://`` brokers through ``broker_transport``.
"""

from __future__ import annotations

import logging
import time
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


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's poller, which asks for more messages as soon as a gevent worker has room.

    Under gevent (Celery's synloop) the worker waits in ``drain_events(timeout=2.0)``.
    When its prefetch window is full the poller sends no BRPOP and waits on the other
    sockets; the acknowledgements that make room wake nothing, so the worker took at
    most its prefetch count of jobs per 2 s (2 jobs/s with ``-c 2``). While a window
    is full, each wait here is short, so that room is seen within ``HELD_BACK_WAIT``.
    """

    HELD_BACK_WAIT = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.last_restore = 0.0

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        long_wait = timeout is None or timeout > self.HELD_BACK_WAIT
        if long_wait and any(c.active_queues and not c.qos.can_consume() for c in self._channels):
            timeout = self.HELD_BACK_WAIT
        return super().get(callback, timeout)

    def maybe_restore_messages(self) -> Any:
        # Each empty wait sweeps for abandoned messages; short waits must not sweep
        # a hundred times a second (event-loop workers sweep on a timer, every second or more).
        now = time.monotonic()
        if now - self.last_restore < 0.5:
            return None
        self.last_restore = now
        return super().maybe_restore_messages()


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()  # kombu's, shared by all the channels, as it makes it
