"""An SMTP sink (aiosmtpd) for the lab's "internet" host: accepts every message on the given ports and writes
each one to a file in a directory (the lab's DIR/mail: `enforcer lab mail` lists it), so that a person, a test or
the demo can see what was delivered, and through which attempt.

    python -m enforcer.lab.smtpsink --maildir DIR --port 25 --port 465 --port 587 [--port 2525]
                                     [--tls-cert CERT --tls-key KEY --relay-user USER --relay-password SECRET]

With a certificate and the relay's account, the relay ports behave as the authenticated relays the seed
recommends: 465 speaks TLS from the first byte, 587 and 2525 want STARTTLS before anything else (530 5.7.0
otherwise), and all three want AUTH (PLAIN or LOGIN) with that account before they take mail (530 5.7.0
Authentication required; a wrong password is 535 5.7.8). Port 25 stays a plain MX. Without them every port is
plain SMTP that takes anything (the tests' bare sinks).

Each file is the message as it came, after the lines a receiving server adds: a Received header (the client's
HELO name and address, the port, the family, the time) and the envelope (X-Lab-Port, X-Lab-Family,
X-Lab-Envelope-From, X-Lab-Envelope-To, X-Lab-Authenticated), which `lab mail` reads back.
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.utils
import hmac
import itertools
import signal
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from .tool_args import IMPLICIT_TLS_PORTS, STARTTLS_PORTS


class Sink:
    """What one port's server does with a message: a file, named in the order they came, port in the name."""

    def __init__(self, maildir: Path, port: int, counter: Iterator[int]):
        self.maildir, self.port, self.counter = maildir, port, counter

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        peer = str(session.peer[0])
        family = "IPv6" if ":" in peer and not peer.startswith("::ffff:") else "IPv4"
        with_ = "ESMTPSA" if session.authenticated else "ESMTPS" if session.ssl else "ESMTP"
        head = (f"Received: from {session.host_name or 'unknown'} ([{peer}]) by internet.lab with {with_} on port "
                f"{self.port} over {family}; {email.utils.formatdate()}\r\n"
                f"X-Lab-Port: {self.port}\r\nX-Lab-Family: {family}\r\n"
                f"X-Lab-Authenticated: {'yes' if session.authenticated else 'no'}\r\n"
                f"X-Lab-Envelope-From: <{envelope.mail_from}>\r\n"
                f"X-Lab-Envelope-To: {', '.join(f'<{r}>' for r in envelope.rcpt_tos)}\r\n")
        name = f"{next(self.counter):06d}-{self.port}-{envelope.mail_from}-{peer}.eml".replace("/", "_")
        (self.maildir / name).write_bytes(head.encode() + (envelope.original_content or envelope.content))
        return "250 OK delivered"


def received(maildir: Path) -> list[dict[str, Any]]:
    """What the sink kept in `maildir`, oldest first: each message's envelope, port, family and whether its client
    authenticated (AUTH on a relay port), as it wrote them."""
    out = []
    for path in sorted(maildir.glob("*.eml")) if maildir.is_dir() else ():
        with path.open("rb") as f:
            h = email.parser.BytesHeaderParser().parse(f)
        out.append({"file": str(path), "port": int(h.get("X-Lab-Port", "0")), "family": h.get("X-Lab-Family"),
                    "from": str(h.get("X-Lab-Envelope-From", "")).strip("<>"),
                    "to": [r.strip().strip("<>") for r in str(h.get("X-Lab-Envelope-To", "")).split(",") if r.strip()],
                    "subject": h.get("Subject"), "authenticated": h.get("X-Lab-Authenticated") == "yes",
                    "received": h.get("Received")})
    return out


class Account:
    """aiosmtpd's authenticator: the relay's one account, compared in constant time."""

    def __init__(self, user: str, password: str):
        self.user, self.password = user.encode(), password.encode()

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and hmac.compare_digest(auth_data.login, self.user) and \
            hmac.compare_digest(auth_data.password, self.password)
        return AuthResult(success=ok, handled=False)


def smtp_factory(maildir: Path, port: int, counter: Iterator[int], tls: ssl.SSLContext | None,
                 account: Account | None) -> Callable[[], SMTP]:
    """A server for one port: a relay port wants TLS and AUTH where the lab gave a certificate and an account."""
    relay = tls is not None and account is not None and port in (*IMPLICIT_TLS_PORTS, *STARTTLS_PORTS)
    starttls = relay and port in STARTTLS_PORTS
    # auth_require_tls only where TLS comes by STARTTLS: aiosmtpd knows of no other, and on 465 the connection is
    # TLS from its first byte (asking it there would hide AUTH)
    return lambda: SMTP(Sink(maildir, port, counter), hostname="internet.lab",
                        tls_context=tls if starttls else None, require_starttls=starttls,
                        auth_required=relay, auth_require_tls=starttls, authenticator=account if relay else None)


async def serve(maildir: Path, ports: list[int], tls: ssl.SSLContext | None = None,
                account: Account | None = None) -> None:
    counter = itertools.count()
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(smtp_factory(maildir, p, counter, tls, account), host=None, port=p,
                                        ssl=tls if tls is not None and account is not None and p in IMPLICIT_TLS_PORTS
                                        else None)
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
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--relay-user")
    parser.add_argument("--relay-password")
    args = parser.parse_args()
    args.maildir.mkdir(parents=True, exist_ok=True)
    tls = None
    if args.tls_cert and args.tls_key:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    account = Account(args.relay_user, args.relay_password) if args.relay_user and args.relay_password else None
    asyncio.run(serve(args.maildir, args.port, tls, account))


if __name__ == "__main__":
    main()
