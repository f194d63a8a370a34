"""kombu's Redis transport, taking messages atomically, and repaired for a broker that went away.

kombu pops a message (BRPOP) and records that it holds it in a second command;
a worker killed between the two, or a Redis primary lost between them (the pop
replicated, the hold not), loses the message. Here a worker takes and holds it
in one script (``take.lua``), and waits for work on the queues' ready markers
(``Channel``); every push sets its queue's marker (``submit.lua``, ``_put``).

When the Redis connection breaks, Celery closes the channel, and kombu 5.7's
``Channel.close`` tries to put back the messages the worker still holds after
it has already dropped its connection pool: the ``AttributeError`` that
follows kills the worker ("Unrecoverable error"). Here that restore failure
is logged instead; the messages stay in kombu's ``unacked`` set in Redis and
come back on their own after ``visibility_timeout``, as for a crashed worker.

And a gevent worker takes new jobs as soon as it has room (``Poller``).

Used for ``redis://`` and ``rediss://`` brokers (``Transport``) and for
``sentinel://`` ones (``SentinelTransport``: the same, with kombu's Sentinel
discovery of the primary), by kombu's transport aliases (``app.worker``).
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from time import monotonic
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from app.store import keys, scripts

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """Redis QoS whose restore at close survives a connection that is already gone.

    A message ``take.lua`` took is held in Redis already: its delivery only
    remembers it here, without kombu's second round trip. An ack or requeue that
    Redis did not take lets the message go here too (``_let_go``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.taken: set[str] = set()

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except (redis.RedisError, OSError, AttributeError) as exc:
            self._let_go(delivery_tag, exc)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue)
        except (redis.RedisError, OSError, AttributeError) as exc:
            self._let_go(delivery_tag, exc)

    def _let_go(self, delivery_tag: str, exc: Exception) -> None:
        """Redis did not take an ack or a requeue: let the message go, and say why.

        This worker no longer holds the message, so its lease must lapse
        (``app.worker.lease`` renews what is held) and the message come back after
        the visibility timeout, at least once; kept here, it would be renewed and
        never run again. A task that ends after its channel was closed (the broker
        went away while it ran) acks on that channel, whose pool kombu has dropped:
        the ``AttributeError`` would kill the worker ("Unrecoverable error"), so it
        is raised as the connection error it is, which Celery logs and survives.
        """
        virtual.QoS.ack(self, delivery_tag)
        if isinstance(exc, AttributeError):
            raise redis.ConnectionError(f"the channel closed before this ack: {exc}") from exc
        raise exc

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.taken:
            self.taken.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:  # delivered some other way (basic_get): kombu's hold
            super().append(message, delivery_tag)

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


READY_SECONDS = 10  # a ready marker's life (take.lua says why)


class Taking:
    """A Redis channel whose worker takes and holds each message in one step (``take.lua``).

    In place of kombu's BRPOP: while the last take found a message, the next is
    taken at once; when it found none, the channel waits (BZPOPMIN, the same
    ``brpop_timeout``) for a queue's ready marker, then takes. A message pushed
    without a marker (kombu's restore of an expired lease) is found at the next
    take, within ``brpop_timeout``.
    """

    _take_next = True
    _sent = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.unheld: set[str] = set()  # queues whose consumer does not acknowledge
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        # A consumer that does not acknowledge (a reply queue's) must not leave holds behind.
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        (self.unheld.add if no_ack else self.unheld.discard)(queue)
        return super().basic_consume(queue, *args, **kwargs)  # type: ignore[misc]

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        if self._take_next:
            lists = [(self._q_for_pri(q, pri), q) for pri in self.priority_steps for q in queues]
            self._sent = "EVALSHA"
            command = [
                "EVALSHA", scripts.TAKE.sha, 2 + 2 * len(lists), self.unacked_key,
                self.unacked_index_key, *(name for name, _ in lists),
                *(keys.ready(queue) for _, queue in lists), time.time(), len(lists),
                *("" if queue in self.unheld else queue for _, queue in lists),
            ]  # fmt: skip
        else:
            self._sent = "BZPOPMIN"
            command = ["BZPOPMIN", *(keys.ready(queue) for queue in queues), timeout or 0]
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, self._sent, **options)
            except redis.exceptions.NoScriptError:
                self.client.script_load(scripts.TAKE.text)
                raise Empty() from None
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if self._sent == "BZPOPMIN" or not reply:
                self._take_next = self._sent == "BZPOPMIN"  # woken (or timed out): look
                raise Empty()
            self._take_next = True  # there may be more
            dest, item = reply
            payload = loads(bytes_to_str(item))
            self.qos.taken.add(payload["properties"]["delivery_tag"])
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        # kombu's push, and the queue's ready marker set in the same round trip.
        batch = kwargs.get("_publish_batch")
        marker = keys.ready(queue)
        if batch is None and not (self._expires and queue in self._expires):
            pri = self._get_message_priority(message, reverse=False)
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                pipe.lpush(self._q_for_pri(queue, pri), dumps(message))
                pipe.zadd(marker, {"ready": 0}).expire(marker, READY_SECONDS).execute()
            return
        super()._put(queue, message, **kwargs)  # type: ignore[misc]
        if batch is not None:
            batch.add("zadd", marker, {"ready": 0})
            batch.add("expire", marker, READY_SECONDS)
        else:  # a queue with an expiry (a reply queue): kombu's pipeline, then the marker
            with self.conn_or_acquire() as client:
                client.pipeline(transaction=False).zadd(marker, {"ready": 0}).expire(
                    marker, READY_SECONDS
                ).execute()


class Channel(Taking, kombu_redis.Channel):
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


class SentinelChannel(Taking, kombu_redis.SentinelChannel):
    QoS = QoS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()
