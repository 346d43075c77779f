"""An SMTP sink (aiosmtpd) for the lab's "internet" host: accepts every message on the given ports and writes
each one to a file in a directory, so that a test or the demo can see what was delivered.

    python -m enforcer.lab.smtpsink --maildir DIR --port 25 --port 465 --port 587

Port 465 is served as plain SMTP here (no TLS): the lab judges connections, not encryption.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, maildir: Path):
        self.maildir = maildir
        self.counter = itertools.count()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{next(self.counter):06d}-{envelope.mail_from}-{session.peer[0]}.eml"
        (self.maildir / name.replace("/", "_")).write_bytes(envelope.original_content or envelope.content)
        return "250 OK delivered"


async def serve(maildir: Path, ports: list[int]) -> None:
    sink = Sink(maildir)
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: SMTP(sink, hostname="internet.lab"), host=None, port=p)
               for p in ports]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args()
    args.maildir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.maildir, args.port))


if __name__ == "__main__":
    main()
