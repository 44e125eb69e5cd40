"""`client.events.stream(...)`: an iterator over the event stream that resumes by itself."""

from __future__ import annotations

import random
import threading
import time
from typing import TYPE_CHECKING, Iterable, Optional

import grpc

from ._errors import RateLimited, WhatisupError, from_rpc_error
from .v1 import events_pb2

if TYPE_CHECKING:  # pragma: no cover
    from ._client import Client

# Failures after which the stream is opened again from its cursor. Anything else (a bad key, an unknown channel,
# a bad filter) would fail the same way again, so it is raised.
RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.CANCELLED,
    }
)

# A stream that stayed open this long was healthy: its next failure starts the backoff from the beginning.
_HEALTHY_SECS = 30.0


def _newer(cursor: str, last: Optional[str]) -> bool:
    # Cursors are opaque, but the gateway's are increasing integers: one at or before the last cursor delivered
    # is a duplicate (the server already guarantees none; this keeps the promise if a proxy replays).
    if last is None or not cursor.isdigit() or not last.isdigit():
        return True
    return int(cursor) > int(last)


class EventStream:
    """Iterates `whatisup.v1.Event` messages, in order, resuming after a dropped stream or a gateway restart.

    After a failure the stream is opened again with `after_cursor` = the cursor of the last event handed out,
    after a capped exponential backoff with jitter (`initial_backoff` doubling up to `max_backoff` seconds), so
    nothing is lost and nothing is delivered twice. `cursor` is that last cursor: store it to resume in another
    process (`client.events.stream(since=cursor)`). `reconnects` counts the re-opens.

    The stream is open when the constructor returns, so events that happen after it are delivered even when
    `since=None` (live). Until the first event arrives there is no cursor, so a drop before it resumes live
    (events in between are not replayed). Pass `since="0"` (the whole retained log) or a stored cursor when every
    event counts.

    `max_retries`: consecutive failed attempts before the last error is raised (None: retry for ever).
    `close()` (thread-safe) ends the iteration; so do leaving a `with` block and closing the client.
    """

    def __init__(
        self,
        client: "Client",
        channel_id: Optional[str] = None,
        events: Optional[Iterable[str]] = None,
        since: Optional[str] = None,
        *,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        max_retries: Optional[int] = None,
    ) -> None:
        self._client = client
        self._channel_id = channel_id or ""
        self._events = list(events or [])
        self.cursor: Optional[str] = str(since) if since not in (None, "") else None
        self.reconnects = 0
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._max_retries = max_retries
        self._failures = 0
        self._opened_at = 0.0
        self._call = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Opened now, not at the first next(): an event that happens after stream() returns is delivered even
        # on a live stream. Failures surface from next(), where they are retried or raised.
        self._open()

    def __iter__(self) -> "EventStream":
        return self

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    @property
    def closed(self) -> bool:
        return self._closed.is_set() or self._client.closed

    def _open(self):
        req = events_pb2.StreamEventsRequest(
            channel_id=self._channel_id, events=self._events, after_cursor=self.cursor or ""
        )
        call = self._client._stubs.events.StreamEvents(req, metadata=self._client._metadata)
        with self._lock:
            if self._closed.is_set():
                call.cancel()
                raise StopIteration
            self._call = call
        # The gateway answers the headers once it has subscribed (or at once with an error): from here on no
        # event can slip past a live stream.
        call.initial_metadata()
        self._opened_at = time.monotonic()
        return call

    def _backoff(self, err: Optional[WhatisupError]) -> None:
        if time.monotonic() - self._opened_at > _HEALTHY_SECS:
            self._failures = 0
        self._failures += 1
        if self._max_retries is not None and self._failures > self._max_retries:
            if err is not None:
                raise err
            raise StopIteration
        delay = min(self._max_backoff, self._initial_backoff * (2 ** (self._failures - 1)))
        delay *= random.uniform(0.5, 1.0)
        if isinstance(err, RateLimited) and err.retry_after:
            delay = max(delay, err.retry_after)
        # Sleeps on the close event, so close() ends the wait at once.
        if self._closed.wait(delay):
            raise StopIteration
        self.reconnects += 1

    def __next__(self) -> events_pb2.Event:
        while True:
            if self.closed:
                raise StopIteration
            with self._lock:
                call = self._call
            try:
                if call is None:
                    call = self._open()
                resp = next(call)
            except StopIteration:
                if self.closed:
                    raise
                # The server ended the stream (it is shutting down): open it again.
                with self._lock:
                    self._call = None
                self._backoff(None)
                continue
            except grpc.RpcError as e:
                with self._lock:
                    self._call = None
                if self.closed:
                    raise StopIteration from None
                err = from_rpc_error(e)
                if e.code() not in RESUMABLE:
                    raise err from e
                self._backoff(err)
                continue
            except ValueError:
                # grpc raises ValueError when the client's channel was closed under us.
                if self.closed:
                    raise StopIteration from None
                raise
            if not _newer(resp.cursor, self.cursor):
                continue
            self._failures = 0
            self.cursor = resp.cursor
            return resp.event
