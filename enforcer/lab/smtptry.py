"""One real SMTP delivery attempt (smtplib), reported as one JSON line: what a VM in the lab sees.

    python -m enforcer.lab.smtptry DESTINATION PORT [--timeout S] [--source-name NAME]

outcome: "delivered" (the server took the message), "timeout" (silence: the platform's silent drop),
"refused" (a reset), or "error" with the detail.
"""

from __future__ import annotations

import json
import os
import smtplib
import time
from email.message import EmailMessage
from typing import Any

from .tool_args import destination_parser


def attempt(destination: str, port: int, timeout: float, sender: str) -> dict[str, Any]:
    msg = EmailMessage()
    msg["From"] = f"{sender}@lab.example"
    msg["To"] = "sink@internet.example"
    msg["Subject"] = f"port25-enforcer lab: {sender} to port {port}"
    msg.set_content("A test message from the port25-enforcer lab.\n")
    started = time.monotonic()
    try:
        with smtplib.SMTP(destination, port, timeout=timeout, local_hostname=f"{sender}.lab") as smtp:
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


def main() -> None:
    parser = destination_parser(__doc__.splitlines()[0], timeout=3.0)
    parser.add_argument("--source-name", default=os.environ.get("ENFORCER_LAB_HOST", "vm"),
                        help="the sending host's name: the HELO (NAME.lab) and the sender (default: the lab host "
                             "`enforcer lab exec` runs it in)")
    args = parser.parse_args()
    print(json.dumps(attempt(args.destination, args.port, args.timeout, args.source_name)), flush=True)


if __name__ == "__main__":
    main()
