"""What the lab's small tools share (they run inside namespaces and on Vagrant VMs, with the standard library and
this package only): their command line, and how the internet host's relay ports speak."""

from __future__ import annotations

import argparse


def destination_parser(description: str, timeout: float) -> argparse.ArgumentParser:
    """DESTINATION PORT [--timeout S]: what every lab tool that tries a connection takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("destination")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=timeout)
    return parser


# How the internet host's servers take mail, as the relays the seed recommends do: 25 is an MX (anyone may hand it
# mail for its domains), 465 takes implicit TLS, 587 and 2525 a STARTTLS first; the three relay ports then want
# AUTH with the lab's relay account, and refuse to relay without it.
IMPLICIT_TLS_PORTS = (465,)
STARTTLS_PORTS = (587, 2525)
