"""Waiting for a task to change, on the result store's PUBLISH, not by polling.

Every state Celery's result backend stores is PUBLISHed on the channel named
after the result's key (``store_result.lua``, ``begin.lua``). One ``Watcher``
per process keeps one subscriber connection, shared by every request of that
process that waits: it subscribes to a task's channel while somebody waits on
it and wakes them when a message comes. It runs in a thread (a greenlet under
gevent), and only that thread touches the connection.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator

import redis

from app.store import keys

log = logging.getLogger(__name__)


class Watcher:
    """One process's subscriber connection and the waits it serves."""

    def __init__(self, client: redis.Redis, subscribe_timeout: float) -> None:
        self.client = client
        self.subscribe_timeout = subscribe_timeout
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}
        self._ready: dict[str, threading.Event] = {}
        self._requests: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._resubscribed: set[str] = set()
        self._work = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[threading.Event]:
        """While inside, the event is set whenever the task's stored state changes.

        On entry the subscription is in place (Redis confirmed it), so reading
        the task after entering misses no change. TimeoutError if Redis does not
        confirm in time.
        """
        channel = keys.result(task_id)
        changed = threading.Event()
        with self._lock:
            self._start()
            first = channel not in self._waiting
            self._waiting.setdefault(channel, set()).add(changed)
            ready = self._ready.setdefault(channel, threading.Event())
            if first:
                self._ask("subscribe", channel)
        try:
            if not ready.wait(self.subscribe_timeout):
                raise TimeoutError("the result store did not confirm the subscription")
            yield changed
        finally:
            with self._lock:
                waiters = self._waiting.get(channel, set())
                waiters.discard(changed)
                if not waiters:
                    self._waiting.pop(channel, None)
                    self._ready.pop(channel, None)
                    self._ask("unsubscribe", channel)

    def waiting(self) -> int:
        """How many waits this process serves now."""
        with self._lock:
            return sum(len(waiters) for waiters in self._waiting.values())

    def _ask(self, what: str, channel: str) -> None:
        self._requests.put((what, channel))
        self._work.set()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="errand-watch", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=False)
        while True:
            try:
                self._serve(pubsub)
            except redis.RedisError as exc:
                log.warning("result subscriber lost Redis (%s); reconnecting", exc)
                self._wake_all()  # whatever was missed, the waiters read again
                with contextlib.suppress(redis.RedisError):
                    pubsub.reset()
                pubsub = self.client.pubsub(ignore_subscribe_messages=False)
                with self._lock:
                    for channel in self._waiting:
                        self._ready.setdefault(channel, threading.Event()).clear()
                        self._requests.put(("subscribe", channel))
                        self._resubscribed.add(channel)
                threading.Event().wait(0.5)

    def _serve(self, pubsub: redis.client.PubSub) -> None:
        while True:
            while not self._requests.empty():
                what, channel = self._requests.get()
                with self._lock:
                    wanted = channel in self._waiting
                if what == "subscribe" and wanted:
                    pubsub.subscribe(channel)
                elif what == "unsubscribe" and not wanted and channel in pubsub.channels:
                    pubsub.unsubscribe(channel)
            if not pubsub.subscribed:
                self._work.wait(1.0)
                self._work.clear()
                continue
            # A short read timeout, so that new subscriptions go out quickly.
            message = pubsub.get_message(timeout=0.02)
            if message is None:
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            with self._lock:
                if message["type"] == "subscribe" and channel in self._ready:
                    self._ready[channel].set()
                    if channel in self._resubscribed:
                        # Subscribed again after Redis came back: what changed before
                        # now reached nobody, so the waiters read once more.
                        self._resubscribed.discard(channel)
                        for changed in self._waiting.get(channel, ()):
                            changed.set()
                elif message["type"] == "message":
                    for changed in self._waiting.get(channel, ()):
                        changed.set()

    def _wake_all(self) -> None:
        with self._lock:
            for waiters in self._waiting.values():
                for changed in waiters:
                    changed.set()
