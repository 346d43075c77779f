"""An SMTP sink (aiosmtpd) for the lab's "internet" host: accepts every message on the given ports and writes
each one to a file in a directory (the lab's DIR/mail: `enforcer lab mail` lists it), so that a person, a test or
the demo can see what was delivered, and through which attempt.

    python -m enforcer.lab.smtpsink --maildir DIR --port 25 --port 465 --port 587

Each file is the message as it came, after the lines a receiving server adds: a Received header (the client's
HELO name and address, the port, the family, the time) and the envelope (X-Lab-Port, X-Lab-Family,
X-Lab-Envelope-From, X-Lab-Envelope-To), which `lab mail` reads back. Port 465 is served as plain SMTP here (no
TLS): the lab judges connections, not encryption.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.utils
import itertools
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP


class Sink:
    """What one port's server does with a message: a file, named in the order they came, port in the name."""

    def __init__(self, maildir: Path, port: int, counter: Iterator[int]):
        self.maildir, self.port, self.counter = maildir, port, counter

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        peer = str(session.peer[0])
        family = "IPv6" if ":" in peer and not peer.startswith("::ffff:") else "IPv4"
        head = (f"Received: from {session.host_name or 'unknown'} ([{peer}]) by internet.lab with ESMTP on port "
                f"{self.port} over {family}; {email.utils.formatdate()}\r\n"
                f"X-Lab-Port: {self.port}\r\nX-Lab-Family: {family}\r\n"
                f"X-Lab-Envelope-From: <{envelope.mail_from}>\r\n"
                f"X-Lab-Envelope-To: {', '.join(f'<{r}>' for r in envelope.rcpt_tos)}\r\n")
        name = f"{next(self.counter):06d}-{self.port}-{envelope.mail_from}-{peer}.eml".replace("/", "_")
        (self.maildir / name).write_bytes(head.encode() + (envelope.original_content or envelope.content))
        return "250 OK delivered"


def received(maildir: Path) -> list[dict[str, Any]]:
    """What the sink kept in `maildir`, oldest first: each message's envelope, port and family, as it wrote them."""
    out = []
    for path in sorted(maildir.glob("*.eml")) if maildir.is_dir() else ():
        with path.open("rb") as f:
            h = email.parser.BytesHeaderParser().parse(f)
        out.append({"file": str(path), "port": int(h.get("X-Lab-Port", "0")), "family": h.get("X-Lab-Family"),
                    "from": str(h.get("X-Lab-Envelope-From", "")).strip("<>"),
                    "to": [r.strip().strip("<>") for r in str(h.get("X-Lab-Envelope-To", "")).split(",") if r.strip()],
                    "subject": h.get("Subject"), "received": h.get("Received")})
    return out


async def serve(maildir: Path, ports: list[int]) -> None:
    counter = itertools.count()
    loop = asyncio.get_running_loop()

    def server(port: int) -> Callable[[], SMTP]:
        return lambda: SMTP(Sink(maildir, port, counter), hostname="internet.lab")
    servers = [await loop.create_server(server(p), host=None, port=p) for p in ports]
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
