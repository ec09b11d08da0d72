"""Stopping the websocket's tasks for good."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

CANCEL_AGAIN = 0.1  # seconds a cancelled task has to end before it is cancelled again


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    One cancellation is not always enough: on Python 3.11, ``asyncio.wait_for`` swallows a
    cancellation that arrives as the future it waits for finishes (it returns the result
    instead; fixed in 3.12), and redis-py wraps every command of a client with a socket timeout
    in one. A subscription cancelled at that moment went on, subscribed its channel again and
    waited for entries forever; its socket's close waited for it, and so did the server's
    shutdown. So a task still running after ``CANCEL_AGAIN`` is cancelled again (the
    subscriptions also stop at their next step once ``closed``)."""
    current = asyncio.current_task()
    pending = {task for task in tasks if task is not current and not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("a websocket task failed", exc_info=task.exception())
