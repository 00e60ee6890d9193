"""kombu's in-memory transport, corrected where it strays from RabbitMQ in ways the bus relies on.

``memory://`` keeps queues, exchanges and bindings in class-level state, so
every connection in the process talks to one shared "broker" (and nothing
crosses a process boundary). This subclass shares that state; it changes:

* ``#`` matches zero or more words. kombu compiles ``a.#`` to ``^a\\..*?$``,
  so ``a.#`` misses ``a``, ``#.b`` misses ``b`` and ``a.#.b`` misses ``a.b``.
* A deleted queue stays deleted. kombu leaves the queue's bindings in the
  exchange's routing table, and creates any queue a message is routed to,
  so an unsubscribed queue came back and filled forever; like RabbitMQ,
  messages for a queue that does not exist are now dropped.
* Routing tables are replaced, never edited in place, under one lock:
  publishers iterate them from other threads, and an in-place unbind could
  make a concurrent publish skip an unrelated queue (or two concurrent
  declarations of one exchange could lose a binding).
* Closing a channel no longer iterates the process-wide queue dictionary,
  which another thread may be growing at that moment.

Still unlike RabbitMQ, and not needed by the bus: ``exclusive`` and
``auto_delete`` are ignored (the bus deletes its private queues itself),
message TTLs are ignored, and a closed channel's unacknowledged messages are
dropped rather than requeued (the bus never holds a message unacknowledged
outside the callback that is processing it).
"""

from __future__ import annotations

import re
import threading
from queue import Empty, Queue
from typing import Any

from kombu.transport import memory, virtual
from kombu.transport.virtual.exchange import TopicExchange

_routing_lock = threading.RLock()


def topic_regex(pattern: str) -> str:
    """The regular expression matching the routing keys an AMQP topic ``pattern`` binds.

    Words are separated by dots; ``*`` is exactly one word, ``#`` zero or more.
    """
    words: list[str] = []
    for word in pattern.split("."):
        if word == "#" and words and words[-1] == "#":
            continue  # "#.#" means "#"
        words.append(word)
    if words == ["#"]:
        return r"(?s)^.*\Z"
    parts = []
    for position, word in enumerate(words):
        if word == "#":
            # A "#" matching no word must also swallow one of the dots around it.
            parts.append(r"(?:[^.]*\.)*" if position == 0 else r"(?:\.[^.]*)*")
            continue
        follows_leading_hash = position == 1 and words[0] == "#"
        separator = "" if position == 0 or follows_leading_hash else r"\."
        parts.append(separator + ("[^.]*" if word == "*" else re.escape(word)))
    return "^" + "".join(parts) + r"\Z"


class _TopicExchange(TopicExchange):
    # The pattern is stored in the routing table and compiled by whichever
    # channel publishes, so even plain memory:// publishers route correctly.
    def key_to_pattern(self, rkey: str) -> str:
        return topic_regex(rkey)


class Channel(memory.Channel):
    exchange_types = dict(memory.Channel.exchange_types, topic=_TopicExchange)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self.queues.setdefault(queue, Queue())

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        target = self.queues.get(queue)
        if target is not None:
            target.put(message)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        source = self.queues.get(queue)
        if source is None:
            raise Empty()
        return source.get(block=False)

    def _size(self, queue: str) -> int:
        source = self.queues.get(queue)
        return 0 if source is None else source.qsize()

    def _purge(self, queue: str) -> int:
        source = self.queues.get(queue)
        if source is None:
            return 0
        size = source.qsize()
        source.queue.clear()
        return size

    def exchange_declare(self, *args: Any, **kwargs: Any) -> Any:
        with _routing_lock:
            return super().exchange_declare(*args, **kwargs)

    def queue_bind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                   arguments: Any = None, **kwargs: Any) -> None:
        exchange = exchange or "amq.direct"
        with _routing_lock:
            if self.state.has_binding(queue, exchange, routing_key):
                return
            self.state.binding_declare(queue, exchange, routing_key, arguments)
            meta = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
            entry = self.state.exchanges[exchange]
            entry["table"] = [*entry.get("table", ()), meta]

    def queue_unbind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                     arguments: Any = None, **kwargs: Any) -> None:
        with _routing_lock:
            self.state.binding_delete(queue, exchange, routing_key)
            entry = self.state.exchanges.get(exchange)
            if entry is None:
                return
            meta = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
            entry["table"] = [other for other in entry.get("table", ()) if other != meta]

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     **kwargs: Any) -> None:
        with _routing_lock:
            if if_empty and self._size(queue):
                return
            for binding in list(self.state.queue_bindings(queue)):
                self.queue_unbind(queue, binding.exchange, binding.routing_key, binding.arguments)
            self.state.queue_bindings_delete(queue)
            self.queues.pop(queue, None)

    def close(self) -> None:
        virtual.Channel.close(self)


class Transport(memory.Transport):
    """``memory://`` with :class:`Channel`; shares kombu's process-wide memory state."""

    Channel = Channel
