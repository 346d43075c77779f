"""The command line the lab's small tools share (they run inside namespaces and on Vagrant VMs, standalone)."""

from __future__ import annotations

import argparse


def destination_parser(description: str, timeout: float) -> argparse.ArgumentParser:
    """DESTINATION PORT [--timeout S]: what every lab tool that tries a connection takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("destination")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=timeout)
    return parser
