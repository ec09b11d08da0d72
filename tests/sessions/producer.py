"""A producer program for the end-to-end tests: ``python producer.py URL EXCHANGE SESSION MODE N``.

MODE ``finish``: N samples, then the session closes. ``raise``: N samples, then an exception.
``forever``: samples until interrupted (SIGINT), after printing "ready" once N are out.
At the end it prints the number of samples it handed to the session, as JSON on the last line.
"""

from __future__ import annotations

import sys
import time

import orjson

from ingest_client import Session


def main() -> None:
    url, exchange, session_id, mode, count = sys.argv[1:6]
    n = int(count)
    sent = 0
    try:
        with Session(session_id, url=url, exchange=exchange) as session:
            for i in range(n):
                session.sample("e2e/speed", i)
                session.sample("e2e/rpm", i * 10)
                sent = i + 1
            if mode == "raise":
                raise RuntimeError("the model diverged")
            if mode == "forever":
                print("ready", flush=True)
                i = n
                while True:
                    session.sample("e2e/speed", i)
                    session.sample("e2e/rpm", i * 10)
                    sent = i + 1
                    i += 1
                    time.sleep(0.001)
    finally:
        print(orjson.dumps({"sent": sent, "session": session.samples}).decode(), flush=True)


if __name__ == "__main__":
    main()
