"""A producer for the signal tests:
``python -m tests.client.producer URL EXCHANGE CLOSE_TIMEOUT sync|async``.

Samples until it is stopped, after printing "ready" once its first flush was confirmed. On the
way out it prints one JSON line: how it ended and how many packets the session gave back."""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from ingest_client import AsyncSession, FlushFailed, Session


def produce(url: str, exchange: str, close_timeout: float) -> None:
    with Session(url=url, exchange=exchange, min_interval=0.1, close_timeout=close_timeout) as s:
        i = 0
        while True:
            s.sample("signals/speed", i)
            i += 1
            if i == 10:
                while s.batcher.messages_sent < 2:  # the open document, then these
                    time.sleep(0.01)
                print("ready", flush=True)
            time.sleep(0.001)


async def produce_async(url: str, exchange: str, close_timeout: float) -> None:
    async with AsyncSession(
        url=url, exchange=exchange, min_interval=0.1, close_timeout=close_timeout
    ) as s:
        i = 0
        while True:
            await s.sample("signals/speed", i)
            i += 1
            if i == 10:
                for _ in range(1000):
                    if s.batcher.messages_sent >= 2:
                        break
                    await asyncio.sleep(0.01)
                print("ready", flush=True)
            await asyncio.sleep(0.001)


def main() -> None:
    url, exchange, close_timeout, mode = sys.argv[1:5]
    ended, unsent = "returned", -1
    try:
        if mode == "async":
            asyncio.run(produce_async(url, exchange, float(close_timeout)))
        else:
            produce(url, exchange, float(close_timeout))
    except FlushFailed as exc:
        ended, unsent = "FlushFailed", len(exc.unsent)
        raise
    except BaseException as exc:
        ended = type(exc).__name__
        raise
    finally:
        print(orjson.dumps({"ended": ended, "unsent": unsent}).decode(), flush=True)


if __name__ == "__main__":
    main()
