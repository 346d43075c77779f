"""The SYN generator of the data-plane benchmark: prebuilt IPv4 SYNs, sent through an AF_PACKET TX ring (the
default: one send() hands RING_BATCH frames to the kernel) or one per send() on an IPPROTO_RAW socket.

Both senders are set up first (the socket, the ring filled with frames), then `blast` sends until a deadline
or a packet count; the process speaking to the parent (roles.sender) sits in between.
"""

from __future__ import annotations

import mmap
import random
import socket
import struct
import time

SOL_PACKET, PACKET_VERSION, PACKET_TX_RING, TPACKET_V2, SO_SNDBUFFORCE = 263, 10, 13, 1, 32
TP_STATUS_AVAILABLE, TP_STATUS_SEND_REQUEST, TP_STATUS_WRONG_FORMAT = 0, 1, 4
RING_FRAME, RING_BLOCK, RING_BATCH = 128, 4096, 256   # frame: 32 bytes of tpacket2_hdr + a 54-byte frame
SNDBUF = 4 * 1024 * 1024


def checksum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_packets(src: str, dst: str, port: int, flows: int, seed: int) -> list[bytes]:
    """Whole IPv4 SYNs (IP header + 20 bytes of TCP, both checksums right: the TX ring sends them as they are),
    one per source port; `src` may name several addresses, comma-separated, taken in turn."""
    rng = random.Random(seed)
    sources, d = [socket.inet_aton(a) for a in src.split(",")], socket.inet_aton(dst)
    out = []
    for i in range(flows):
        s = sources[i % len(sources)]
        sport = 1024 + i
        tcp = struct.pack("!HHIIBBHHH", sport, port, rng.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
        csum = checksum(s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp)) + tcp)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0x4000, 64, socket.IPPROTO_TCP, 0,
                         s, d)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        out.append(ip + tcp)
    return out


def spoofed_frames(dst4: str, dst6: str, src_mac: str, dst_mac: str, count: int, seed: int) -> list[bytes]:
    """Ethernet frames of SYNs to port 25 from `count` random source addresses, half IPv4 (in 198.18.0.0/15), half
    IPv6 (in 2001:db8::/32): the project's own ranges, as a VM that forges its source would send them. The TCP
    checksum is left 0: nothing on the way checks it, and the queue judges the source only."""
    rng = random.Random(seed)
    head = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    d4, d6 = socket.inet_aton(dst4), socket.inet_pton(socket.AF_INET6, dst6)
    out = []
    for i in range(count):
        tcp = struct.pack("!HHIIBBHHH", 1024 + i % 60000, 25, rng.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
        if i % 2:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0x4000, 64, socket.IPPROTO_TCP, 0,
                             (0xC6120000 | rng.getrandbits(17)).to_bytes(4, "big"), d4)
            out.append(head + b"\x08\x00" + ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + tcp)
        else:
            src = (0x20010DB8 << 96 | rng.getrandbits(96)).to_bytes(16, "big")
            ip = struct.pack("!IHBB16s16s", 6 << 28, 20, socket.IPPROTO_TCP, 64, src, d6)
            out.append(head + b"\x86\xdd" + ip + tcp)
    return out


def ethernet_frames(packets: list[bytes], src_mac: str, dst_mac: str) -> list[bytes]:
    head = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    return [head + p for p in packets]


class RingSender:
    """AF_PACKET with a PACKET_TX_RING on `ifname`: the prebuilt frames sit in the ring for good; each round
    marks RING_BATCH of them for sending (a status word each) and one send() hands them all to the kernel. One
    syscall per RING_BATCH packets instead of one per packet: the generator outruns the consumers."""

    name = "ring"

    def __init__(self, frames: list[bytes], ifname: str = "eth0"):
        self.nframes = len(frames)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
        try:
            self.sock.bind((ifname, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF)
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            blocks = self.nframes * RING_FRAME // RING_BLOCK
            self.sock.setsockopt(SOL_PACKET, PACKET_TX_RING,
                                 struct.pack("IIII", RING_BLOCK, blocks, RING_FRAME, self.nframes))
            self.ring = mmap.mmap(self.sock.fileno(), RING_BLOCK * blocks, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            self.sock.close()
            raise
        ring = self.ring
        for i, f in enumerate(frames):
            ring[i * RING_FRAME + 32:i * RING_FRAME + 32 + len(f)] = f   # data at TPACKET_ALIGN(tpacket2_hdr)
            struct.pack_into("II", ring, i * RING_FRAME, TP_STATUS_AVAILABLE, len(f))  # tp_status, tp_len
        self.status = memoryview(ring).cast("I")

    def _mark(self, start: int) -> tuple[int, int]:
        """Mark the frames of one batch that the kernel is done with for sending: (marked, still busy)."""
        status, step = self.status, RING_FRAME // 4
        marked = busy = 0
        for idx in range(start * step, (start + RING_BATCH) * step, step):
            if status[idx] == TP_STATUS_AVAILABLE:
                status[idx] = TP_STATUS_SEND_REQUEST
                marked += 1
            elif status[idx] == TP_STATUS_WRONG_FORMAT:
                raise RuntimeError("the kernel refused a ring frame (TP_STATUS_WRONG_FORMAT)")
            else:
                busy += 1   # still in flight from the previous round: skipped
        return marked, busy

    def blast(self, seconds: float, max_packets: int, rate: float) -> dict:
        """Send until `seconds` have passed or `max_packets` were sent; `rate` (packets/s) paces it, 0 does not."""
        sent = busy = errors = 0
        t0 = time.monotonic()
        end = t0 + seconds
        monotonic, send, dontwait, mark = time.monotonic, self.sock.send, socket.MSG_DONTWAIT, self._mark
        starts = range(0, self.nframes, RING_BATCH)
        try:
            while sent < max_packets:
                for start in starts:
                    marked, skipped = mark(start)
                    busy += skipped
                    try:
                        send(b"", dontwait)
                    except OSError:
                        errors += 1
                    sent += marked
                    if rate:
                        ahead = t0 + sent / rate - monotonic()
                        if ahead > 0.0005:
                            time.sleep(ahead)
                if monotonic() >= end:
                    break
        finally:
            seconds = time.monotonic() - t0
            self.close()
        return {"sent": sent, "seconds": seconds, "errors": errors, "busy": busy}

    def close(self) -> None:
        self.status.release()
        self.ring.close()
        self.sock.close()


class RawSender:
    """One send() per packet on an IPPROTO_RAW socket (the fallback; about half the ring's rate)."""

    name = "raw"

    def __init__(self, packets: list[bytes], dst: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        self.sock.connect((dst, 0))
        self.chunks = [packets[i:i + 1024] for i in range(0, len(packets), 1024)]

    def blast(self, seconds: float, max_packets: int, rate: float = 0) -> dict:
        """Send until `seconds` have passed or `max_packets` were sent; no pacing (`rate` is ignored)."""
        sent = errors = 0
        t0 = time.monotonic()
        end = t0 + seconds
        monotonic, send = time.monotonic, self.sock.send
        while sent < max_packets:
            for chunk in self.chunks:
                try:
                    for p in chunk:
                        send(p)
                except OSError:
                    errors += 1  # ENOBUFS and the like: the rest of the chunk is skipped, not counted
                    continue
                sent += len(chunk)
            if monotonic() >= end:
                break
        self.sock.close()
        return {"sent": sent, "seconds": time.monotonic() - t0, "errors": errors, "busy": 0}
