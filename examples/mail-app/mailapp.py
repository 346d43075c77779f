"""A tiny mail-sending application, the kind whose tests the port25_lab fixture is for: it delivers straight to
the recipient's MX on port 25 and, when that port is blocked (the platform drops the SYN: the connection times
out), falls back to its authenticated relay on 587 (STARTTLS, then AUTH).

    python -m mailapp --to friend@gmail.com [--mx HOST] [--timeout S]

The relay comes from the environment: MAILAPP_RELAY (host:port), MAILAPP_RELAY_USER, MAILAPP_RELAY_PASSWORD and
MAILAPP_RELAY_CA (the certificate to trust, if not a public one). It prints the route the message took.
"""

from __future__ import annotations

import argparse
import os
import smtplib
import ssl
from email.message import EmailMessage

# Gmail's MX host; a real app would look the recipient's domain up (inside the lab, every name leads to its MX)
GMAIL_MX = "gmail-smtp-in.l.google.com"


def message(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "orders@shop.example"
    msg["To"] = to
    msg["Subject"] = "Your order has shipped"
    msg.set_content("Your order is on its way.\n")
    return msg


def send(msg: EmailMessage, mx: str, timeout: float) -> str:
    """Deliver `msg` directly to `mx` on port 25, else through the relay; returns the route taken."""
    try:
        with smtplib.SMTP(mx, 25, timeout=timeout) as smtp:
            smtp.send_message(msg)
        return f"direct to {mx}:25"
    except (TimeoutError, ConnectionRefusedError):
        pass  # port 25 blocked on the way out: what cloud platforms do
    host, _, port = os.environ["MAILAPP_RELAY"].rpartition(":")
    context = ssl.create_default_context(cafile=os.environ.get("MAILAPP_RELAY_CA") or None)
    with smtplib.SMTP(host, int(port), timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login(os.environ["MAILAPP_RELAY_USER"], os.environ["MAILAPP_RELAY_PASSWORD"])
        smtp.send_message(msg)
    return f"relay {host}:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description="send one message")
    parser.add_argument("--to", required=True)
    parser.add_argument("--mx", default=GMAIL_MX)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the MX on port 25")
    args = parser.parse_args()
    print(send(message(args.to), args.mx, args.timeout))


if __name__ == "__main__":
    main()
