"""One real SMTP delivery attempt (smtplib), reported as one JSON line: what a VM in the lab sees.

    python -m enforcer.lab.smtptry DESTINATION PORT [--timeout S] [--source-name NAME]
                                   [--user USER --password SECRET [--cafile CERT]]

outcome: "delivered" (the server took the message), "timeout" (silence: the platform's silent drop),
"refused" (a reset), or "error" with the detail. With an account it submits as a client of an authenticated
relay does: TLS from the first byte on 465, STARTTLS first elsewhere, then AUTH (the certificate checked against
--cafile, the lab's own). Inside `enforcer lab exec` the host's name, the lab's relay account and its certificate
come from the environment the lab sets.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import time
from email.message import EmailMessage
from typing import Any

from .tool_args import IMPLICIT_TLS_PORTS, destination_parser


def attempt(destination: str, port: int, timeout: float, sender: str, account: tuple[str, str] | None = None,
            cafile: str | None = None) -> dict[str, Any]:
    msg = EmailMessage()
    msg["From"] = f"{sender}@lab.example"
    msg["To"] = "sink@internet.example"
    msg["Subject"] = f"port25-enforcer lab: {sender} to port {port}"
    msg.set_content("A test message from the port25-enforcer lab.\n")
    started = time.monotonic()
    try:
        with connect(destination, port, timeout, f"{sender}.lab", account, cafile) as smtp:
            smtp.send_message(msg)
        outcome, detail = "delivered", ""
    except TimeoutError:
        outcome, detail = "timeout", ""
    except ConnectionRefusedError:
        outcome, detail = "refused", ""
    except (OSError, smtplib.SMTPException) as e:
        outcome, detail = "error", f"{type(e).__name__}: {e}"
    return {"outcome": outcome, "detail": detail, "seconds": round(time.monotonic() - started, 3),
            "destination": destination, "port": port}


def connect(destination: str, port: int, timeout: float, helo: str, account: tuple[str, str] | None,
            cafile: str | None) -> smtplib.SMTP:
    """A session ready for a message: plain, or (with an account) over TLS and authenticated."""
    if account is None:
        return smtplib.SMTP(destination, port, timeout=timeout, local_hostname=helo)
    context = ssl.create_default_context(cafile=cafile)
    smtp: smtplib.SMTP
    if port in IMPLICIT_TLS_PORTS:
        smtp = smtplib.SMTP_SSL(destination, port, timeout=timeout, local_hostname=helo, context=context)
    else:
        smtp = smtplib.SMTP(destination, port, timeout=timeout, local_hostname=helo)
        smtp.starttls(context=context)
    smtp.login(*account)
    return smtp


def main() -> None:
    parser = destination_parser(__doc__.splitlines()[0], timeout=3.0)
    parser.add_argument("--source-name", default=os.environ.get("ENFORCER_LAB_HOST", "vm"),
                        help="the sending host's name: the HELO (NAME.lab) and the sender (default: the lab host "
                             "`enforcer lab exec` runs it in)")
    parser.add_argument("--user", default=os.environ.get("ENFORCER_LAB_RELAY_USER"))
    parser.add_argument("--password", default=os.environ.get("ENFORCER_LAB_RELAY_PASSWORD"))
    parser.add_argument("--cafile", default=os.environ.get("ENFORCER_LAB_CA"))
    args = parser.parse_args()
    account = (args.user, args.password) if args.user and args.password and args.port != 25 else None
    print(json.dumps(attempt(args.destination, args.port, args.timeout, args.source_name, account, args.cafile)),
          flush=True)


if __name__ == "__main__":
    main()
