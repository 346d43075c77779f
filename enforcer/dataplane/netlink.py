"""Netlink framing for the netfilter subsystems this package speaks to without a library on the hot side: the
queue's configuration (queue.py: the fail-open flag) and the ipsets of the kernel cache (rules/ipset.py). A
message is a netlink header, the nfnetlink family header, then attributes, each padded to 4 bytes."""

from __future__ import annotations

import os
import socket
import struct

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # error answers without a copy of the request's payload
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL = 0x1, 0x4, 0x200
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
HEADER = struct.Struct("=IHHII")  # length, type (subsystem << 8 | command), flags, sequence number, port id


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + bytes(-size % 4)


def nfgenmsg(family: int, resource: int = 0) -> bytes:
    """The nfnetlink header: the address family, version 0, and the resource (a queue number) in network order."""
    return struct.pack("=BBH", family, 0, socket.htons(resource))


def message(subsystem: int, command: int, flags: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(HEADER.size + len(body), (subsystem << 8) | command, flags, seq, 0) + body


def netfilter_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_NETFILTER socket in the named network namespace, else in this thread's own. A socket stays in the
    namespace it was made in, so only this thread steps in and out, for the socket() call."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    from pyroute2 import netns as namespaces
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        namespaces.setns(netns, flags=0)  # flags 0: never create it
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        finally:
            namespaces.setns(home, flags=0)
    finally:
        os.close(home)
