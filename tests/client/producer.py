"""A producer for the signal tests: ``python -m tests.client.producer URL EXCHANGE CLOSE_TIMEOUT``.

Samples until it is stopped, after printing "ready" once its first flush was confirmed. On the
way out it prints one JSON line: how it ended and how many packets the session gave back."""

from __future__ import annotations

import sys
import time

import orjson

from ingest_client import FlushFailed, Session


def main() -> None:
    url, exchange, close_timeout = sys.argv[1:4]
    ended, unsent = "returned", -1
    try:
        with Session(
            url=url, exchange=exchange, min_interval=0.1, close_timeout=float(close_timeout)
        ) as session:
            i = 0
            while True:
                session.sample("signals/speed", i)
                i += 1
                if i == 10:
                    while session.batcher.messages_sent < 2:  # the open document, then these
                        time.sleep(0.01)
                    print("ready", flush=True)
                time.sleep(0.001)
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
