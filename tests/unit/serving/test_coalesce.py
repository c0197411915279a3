"""Deltas waiting in a stream's queue go out as one chunk; the event after them is kept."""

import asyncio

from tunesmith.serving.generation import _coalesce


def _queue(*events):
    q = asyncio.Queue()
    for e in events:
        q.put_nowait(e)
    return q


def test_waiting_deltas_join_and_the_next_event_is_returned():
    done = ("done", "stop", 3, 4)
    q = _queue(("delta", "b"), ("delta", "c"), done, ("delta", "never read"))
    assert _coalesce(q, "a") == ("abc", done)
    assert q.qsize() == 1  # nothing after the finishing event was taken


def test_an_empty_queue_leaves_the_delta_alone():
    assert _coalesce(_queue(), "a") == ("a", None)
