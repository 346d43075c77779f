"""`enforcer probe --preflight TARGET`: from the machine it runs on (a cloud VM about to send mail), a TCP
connection to the target its admin names (their relay or MX) on ports 25, 465 and 587, over IPv4 and IPv6;
each reported as connected, refused, timed out or unreachable, with the time it took. Standard library only and
no root, so it runs on any machine, and inside a lab namespace:

    python3 -m enforcer.lab.preflight mx.example.net [--port 25] [--timeout 5]   (one JSON line)
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

PREFLIGHT_PORTS = (25, 465, 587)
FAMILIES = {"IPv4": socket.AF_INET, "IPv6": socket.AF_INET6}
Resolver = Callable[[str, int], list[str]]


class TargetError(ValueError):
    """The target is not a host name or address, or does not resolve at all."""


def check_target(target: str) -> str:
    """A host name or an address, as the admin wrote it; else TargetError saying what to write."""
    text = target.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if not text or len(text) > 253 or not all(
            label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels):
        raise TargetError(f"{target!r} is not a host name or an address; name your relay or MX, e.g. "
                          "--preflight mx.example.net (the port goes in --port)")
    return text


def system_resolver(target: str, family: int) -> list[str]:
    """The target's addresses of one family, as this machine resolves them (none: [])."""
    try:
        found = socket.getaddrinfo(target, None, family, socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno in (socket.EAI_NONAME, socket.EAI_ADDRFAMILY, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return []
        raise TargetError(f"cannot resolve {target!r}: {e.strerror}; check this machine's DNS") from None
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def addresses(target: str, resolve: Resolver = system_resolver) -> dict[str, str | None]:
    """{"IPv4": its first IPv4 address or None, "IPv6": ...}; TargetError when it has none at all. An address
    given is its own family's, and the other family has none."""
    try:
        version = ipaddress.ip_address(target).version
        return {name: target if name == f"IPv{version}" else None for name in FAMILIES}
    except ValueError:
        pass
    found = {name: next(iter(resolve(target, family)), None) for name, family in FAMILIES.items()}
    if not any(found.values()):
        raise TargetError(f"{target!r} has no address (no A or AAAA record); check the name of your relay or MX")
    return found


def connect(address: str, port: int, timeout: float) -> dict[str, Any]:
    """One TCP connection: connected, refused (a reset), timeout (silence: how a provider's block looks),
    unreachable (an ICMP error or no route), or error."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    started = time.monotonic()
    detail = ""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            outcome = "connected"
        except TimeoutError:
            outcome = "timeout"
        except ConnectionRefusedError:
            outcome = "refused"
        except OSError as e:
            unreachable = e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL)
            outcome, detail = ("unreachable", e.strerror or "") if unreachable else ("error", str(e))
    return {"address": address, "port": port, "outcome": outcome, "seconds": round(time.monotonic() - started, 3),
            "detail": detail}


def preflight(target: str, ports: tuple[int, ...] = PREFLIGHT_PORTS, timeout: float = 5.0,
              resolve: Resolver = system_resolver) -> dict[str, Any]:
    """Every port over every family the target has an address for, at once; a family without one says so."""
    target = check_target(target)
    found = addresses(target, resolve)
    tried = [(family, address, port) for family, address in found.items() if address for port in ports]
    with ThreadPoolExecutor(max_workers=max(1, len(tried))) as pool:
        results = list(pool.map(lambda t: {"family": t[0], **connect(t[1], t[2], timeout)}, tried))
    return {"target": target, "timeout": timeout, "ports": list(ports), "addresses": found, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--port", type=int, action="append")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    try:
        report = preflight(args.target, tuple(args.port or PREFLIGHT_PORTS), args.timeout)
    except TargetError as e:
        report = {"error": str(e)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
