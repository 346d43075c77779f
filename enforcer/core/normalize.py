"""Normalising what a person types (a name, a day, an address or prefix, a MAC) to the one spelling the inventory
keeps, or refusing it with a UserError that says how to write it.

Apart from the model because every way in (the CLI's options, an inventory document, the lifecycle operations)
takes input through these, and one spelling per value is what lets the store and the table compare by equality.
"""

from __future__ import annotations

import datetime
import ipaddress
import re

from ..errors import UserError

# matched whole (fullmatch): with match(), '$' also matches before a final newline and "ea-vm\n" passed
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def normalize_day(value: object, what: str = "created") -> str:
    """A day as YYYY-MM-DD, from a date (YAML reads 2021-06-24 as one) or such a string."""
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, str) and len(value.strip()) == 10:  # fromisoformat() also takes 20210624
        try:
            return datetime.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    shown = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    raise UserError(f"{what}: {shown[:60]} is not a day; write it as YYYY-MM-DD, e.g. 2021-06-24")


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"invalid {what} name {name!r}; use 1-63 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    return name


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges the gateway never routes: no VM sends from them, no network of VMs holds them, no destination in them is
# reached through us. The most specific first, as the first match is the one named.
UNUSABLE: tuple[tuple[Network, str], ...] = tuple((ipaddress.ip_network(p), what) for p, what in (
    ("0.0.0.0/32", "the unspecified address"),
    ("0.0.0.0/8", "'this network'"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
))
_EXAMPLE = {4: ("198.18.1.10", "198.18.0.0/24"), 6: ("2001:db8::10", "2001:db8:1::/64")}


def _parse_network(text: str, bad: str) -> Network:
    """The network `text` names; a zone index (fe80::1%eth0) is refused: Python accepts it, nothing here can
    use it, and the packed address the packet path looks up has no room for it."""
    text = str(text).strip()
    if "%" in text:
        raise UserError(f"{text!r} carries a zone index (the part from '%'), which has no place here; "
                        "write the address without it")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise UserError(bad) from None


def _check_usable(text: str, net: Network, host: bool) -> None:
    """Refuse an address in, or a prefix overlapping, a range the gateway never routes."""
    block, what = next(((b, w) for b, w in UNUSABLE if b.version == net.version and b.overlaps(net)),
                       (None, ""))
    if block is None:
        return
    if what == "IPv4-mapped":
        v4 = f" ({ipaddress.IPv6Address(int(net.network_address)).ipv4_mapped})" if host else ""
        raise UserError(f"{text!r} is an IPv4-mapped IPv6 {'address' if host else 'prefix'} ({block}): the kernel "
                        f"sees such traffic as IPv4; write it as IPv4{v4}")
    example = _EXAMPLE[net.version][0 if host else 1]
    if not host:
        raise UserError(f"prefix {text!r} overlaps {block} ({what}), which the gateway never routes; "
                        f"give a unicast range such as {example}")
    article = "an" if what.lstrip("'")[0].lower() in "aeiou" else "a"
    phrase = what if what.startswith("the ") else f"{article} {what} address"
    raise UserError(f"{text!r} is {phrase} ({block}), which the gateway never routes; "
                    f"give a unicast address such as {example}")


def normalize_address(text: str, allow_prefix: bool) -> str:
    """'198.18.1.10' or '2001:DB8::0010' -> canonical host; '198.18.2.0/28' -> canonical prefix."""
    net = _parse_network(text, f"invalid address {text!r}; write an IPv4 or IPv6 address such as 198.18.1.10 "
                         "or 2001:db8::10" + (", or a prefix such as 198.18.2.0/28" if allow_prefix else ""))
    host = net.prefixlen == net.max_prefixlen
    if not host and not allow_prefix:
        raise UserError(f"{text!r} is a prefix; give a single address")
    _check_usable(text, net, host)
    return str(net.network_address) if host else str(net)


def normalize_prefix(text: str) -> str:
    net = _parse_network(text, f"invalid prefix {text!r}; write a network such as 198.18.0.0/24 or "
                         "2001:db8:1::/64 with the host bits zero")
    _check_usable(text, net, host=False)
    return str(net)


def normalize_mac(text: str | None) -> str | None:
    if text is None:
        return None
    mac = str(text).strip().lower().replace("-", ":")
    if not MAC_RE.fullmatch(mac):
        raise UserError(f"invalid MAC address {text!r}; write it as 52:54:00:12:34:56")
    return mac


def is_prefix(address: str) -> bool:
    return "/" in address

