"""`enforcer probe`: send one TCP SYN (scapy) and report what came back (SYN-ACK, RST, ICMP) or silence, with
the time it took. Needs only scapy and root, so it also runs on a Vagrant VM from the synced folder:

    sudo PYTHONPATH=/vagrant-project python3 -m enforcer.lab.probe 198.19.25.25 25
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from .tool_args import destination_parser


def probe(destination: str, port: int, timeout: float = 2.0, source: str | None = None) -> dict[str, Any]:
    from scapy.all import ICMP, IP, TCP, IPv6, conf, sr1
    conf.verb = 0
    layer = IPv6(dst=destination) if ":" in destination else IP(dst=destination)
    if source:
        layer.src = source
    syn = layer / TCP(sport=random.randint(33000, 60999), dport=port, flags="S", seq=random.getrandbits(32))
    started = time.monotonic()
    answer = sr1(syn, timeout=timeout)
    seconds = round(time.monotonic() - started, 4)
    if answer is None:
        result = "silence"
    elif answer.haslayer(TCP):
        flags = answer[TCP].flags
        result = "syn-ack" if flags.S and flags.A else "rst" if flags.R else f"tcp {flags}"
    elif answer.haslayer(ICMP) or answer.lastlayer().name.startswith("ICMPv6"):
        result = "icmp-unreachable"
    else:
        result = answer.summary()
    return {"destination": destination, "port": port, "result": result, "seconds": seconds,
            "timeout": timeout}


def describe(r: dict[str, Any]) -> str:
    what = {"syn-ack": "SYN-ACK: the port answers; nothing in the way",
            "rst": "RST: a host answered that nothing listens there",
            "silence": f"silence for {r['timeout']} s: dropped on the way (the platform's block looks like this)",
            "icmp-unreachable": "ICMP unreachable: a router or firewall refused it"}.get(r["result"], r["result"])
    return f"{r['destination']} port {r['port']}: {what} ({r['seconds']} s)"


def main() -> None:
    parser = destination_parser(__doc__.splitlines()[0], timeout=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = probe(args.destination, args.port, args.timeout)
    print(json.dumps(r) if args.json else describe(r))


if __name__ == "__main__":
    main()
