"""Parsing argument values the CLI shares."""

from __future__ import annotations

import ipaddress
import re

from ..errors import UserError

PORT_RE = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() also takes '²' and '٢٥'
FORMS = "write 198.51.100.25:25 or [2001:db8::25]:25"


def parse_destination(text: str) -> tuple[str, int]:
    """'198.51.100.25', '198.51.100.25:587', '2001:db8::25', '[2001:db8::25]:587' -> (address, port)."""
    host, port = _split(text)
    if "%" in host:
        raise UserError(f"--to {text!r}: a zone index (%...) names a link of this machine, not a destination "
                        "the gateway forwards to; write the address without it")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise UserError(f"--to {text!r}: not an address; {FORMS}") from None
    return address, _port(text, port)


def _split(text: str) -> tuple[str, str | None]:
    """(host, port or None): brackets around an IPv6 address; a bare IPv6 address has no port."""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed:
            raise UserError(f"--to {text!r}: unclosed '['; {FORMS}")
        if ":" not in host:
            raise UserError(f"--to {text!r}: brackets are for IPv6 addresses; write {host}:{rest[1:] or 25}")
        if rest and not rest.startswith(":"):
            raise UserError(f"--to {text!r}: only ':PORT' may come after ']'; {FORMS}")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, port
    head, _, tail = text.rpartition(":")
    if text.count(":") > 1 and PORT_RE.fullmatch(tail) and _is_ipv6(head):
        # '::1:25' is the address ::1:25, but it was as likely meant as ::1 port 25
        raise UserError(f"--to {text!r} is ambiguous: the address {text}, or {head} port {tail}? "
                        f"write [{text}] or [{head}]:{tail}")
    return text, None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port(text: str, port: str | None) -> int:
    if port is None:
        return 25
    if port == "":
        raise UserError(f"--to {text!r}: the port is empty; give one after the ':' or leave the ':' out")
    if not PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise UserError(f"--to {text!r}: the port must be a number from 1 to 65535")
    return int(port)
