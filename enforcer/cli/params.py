"""Parsing argument values the CLI shares."""

from __future__ import annotations

import ipaddress

from ..errors import UserError


def parse_destination(text: str) -> tuple[str, int]:
    """'198.51.100.25', '198.51.100.25:587', '2001:db8::25', '[2001:db8::25]:587' -> (address, port)."""
    host, port = text, "25"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("25" if not rest else "bad")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise UserError(f"--to {text!r}: not an address; write 198.51.100.25:25 or [2001:db8::25]:25") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--to {text!r}: the port must be a number from 1 to 65535")
    return address, int(port)
