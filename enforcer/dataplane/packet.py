"""Reading a TCP flow out of the raw bytes the queue hands over, for the drop log (off the packet path).
Pure; no parsing library. The packet path itself (callback.PacketCallback) reads only the source address."""

from __future__ import annotations

import socket


IPV6_EXTENSIONS = {0, 43, 60, 135, 139, 140, 253, 254}  # hop-by-hop, routing, destination opts, ...


def flow(payload: bytes) -> tuple[str, str, int, int] | None:
    """(source, destination, source port, destination port) of a TCP packet, for logs; None if unreadable."""
    try:
        version = payload[0] >> 4
        if version == 4:
            ihl = (payload[0] & 15) * 4
            if ihl < 20 or payload[9] != 6 or int.from_bytes(payload[6:8], "big") & 0x1FFF:
                return None  # not TCP, or a later fragment without a TCP header
            src = socket.inet_ntop(socket.AF_INET, payload[12:16])
            dst = socket.inet_ntop(socket.AF_INET, payload[16:20])
            offset = ihl
        elif version == 6:
            src = socket.inet_ntop(socket.AF_INET6, payload[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, payload[24:40])
            nxt, offset = payload[6], 40
            for _ in range(8):  # bounded walk of extension headers
                if nxt == 6:
                    break
                if nxt == 44:  # fragment header: fixed 8 bytes; only the first fragment has ports
                    if int.from_bytes(payload[offset + 2:offset + 4], "big") & 0xFFF8:
                        return None
                    nxt, offset = payload[offset], offset + 8
                elif nxt in IPV6_EXTENSIONS:
                    nxt, offset = payload[offset], offset + (payload[offset + 1] + 1) * 8
                else:
                    return None
            if nxt != 6:
                return None
        else:
            return None
        if len(payload) < offset + 4:
            return None
        return src, dst, int.from_bytes(payload[offset:offset + 2], "big"), \
            int.from_bytes(payload[offset + 2:offset + 4], "big")
    except (IndexError, ValueError, OSError):
        return None
