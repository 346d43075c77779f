"""The kernel cache's userspace end without root: its ipset netlink messages byte for byte against pyroute2's own
encoding, how it batches them and reads the kernel's answers (a fake socket), and its nft batches (a recorder).
tests/integration/test_kernel_cache.py runs it against the real kernel."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from pyroute2.netlink import NLM_F_ACK, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.ipset import ipset_msg

from enforcer.dataplane.kernelcache import KernelCache
from enforcer.dataplane.rules import RuleError
from enforcer.dataplane.rules.base import CacheError
from enforcer.dataplane.rules.ipset import BATCH, IPSET_ERR_EXIST, IPSET_ERR_HASH_FULL, entry_data, message, set_attrs

A4, B4 = socket.inet_aton("198.18.1.10"), socket.inet_aton("198.18.1.11")
A6 = socket.inet_pton(socket.AF_INET6, "2001:db8:1::10")


def pyroute2_message(cmd: int, flags: int, seq: int, family: int, name: str, address: str | None = None,
                     timeout: int | None = None) -> bytes:
    """The same message as pyroute2.ipset.IPSet would send it (its add/delete/flush build exactly these)."""
    msg = ipset_msg()
    msg["header"]["type"] = (6 << 8) | cmd
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["nfgen_family"] = family
    msg["attrs"] = [["IPSET_ATTR_PROTOCOL", 6], ["IPSET_ATTR_SETNAME", name]]
    if address is not None:
        version = "IPSET_ATTR_IPADDR_IPV6" if ":" in address else "IPSET_ATTR_IPADDR_IPV4"
        data = [["IPSET_ATTR_IP_FROM", {"attrs": [[version, address]]}]]
        if timeout is not None:
            data.append(["IPSET_ATTR_TIMEOUT", timeout])
        msg["attrs"].append(["IPSET_ATTR_DATA", {"attrs": data}])
    msg.encode()
    return bytes(msg.data)


@pytest.mark.parametrize("cmd, flags, family, name, key, address, timeout", [
    (9, NLM_F_REQUEST | NLM_F_EXCL, socket.AF_INET, "p25-allow4", A4, "198.18.1.10", 300),
    (9, NLM_F_REQUEST | NLM_F_ACK, socket.AF_INET6, "p25-block6", A6, "2001:db8:1::10", 86400),
    (10, NLM_F_REQUEST, socket.AF_INET, "p25-block4", A4, "198.18.1.10", None),
    (10, NLM_F_REQUEST, socket.AF_INET6, "p25-allow6", A6, "2001:db8:1::10", None),
    (4, NLM_F_REQUEST | NLM_F_ACK, socket.AF_INET, "p25-allow4", None, None, None),
])
def test_ipset_messages_are_the_bytes_pyroute2_encodes(cmd, flags, family, name, key, address, timeout):
    body = set_attrs(family, name)
    if key is not None:
        body += entry_data(4 if len(key) == 4 else 6, key, timeout)
    assert message(cmd, flags, 77, body) == pyroute2_message(cmd, flags, 77, family, name, address, timeout)


class FakeNetlink:
    """A netlink socket that records what is sent and answers as the kernel does: nothing for a message that
    succeeds without NLM_F_ACK, an NLMSG_ERROR for one that fails or asks for an answer. `refuse` maps
    (command, set name, address) to the error code the kernel would give."""

    def __init__(self, refuse: dict[tuple[int, str, bytes | None], int] | None = None):
        self.refuse = refuse or {}
        self.sent: list[list[tuple[int, int, str, bytes | None]]] = []  # per send(): (cmd, flags, set, address)
        self.answers: list[bytes] = []

    def setsockopt(self, *args) -> None:
        pass

    def bind(self, address) -> None:
        pass

    def settimeout(self, timeout) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, data: bytes) -> int:
        batch, offset = [], 0
        while offset < len(data):
            size, kind, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
            cmd, name, address = kind & 0xFF, *self.parse(data[offset + 20:offset + size])
            batch.append((cmd, flags, name, address))
            code = self.refuse.get((cmd, name, address), 0)
            if code or flags & NLM_F_ACK:
                self.answers.append(struct.pack("=IHHIIi", 36, 2, 0, seq, 0, -code) + data[offset:offset + 16])
            offset += size
        self.sent.append(batch)
        return len(data)

    @staticmethod
    def parse(attrs: bytes) -> tuple[str, bytes | None]:
        name, address, offset = "", None, 0
        while offset < len(attrs):
            size, kind = struct.unpack_from("=HH", attrs, offset)
            if kind == 2:
                name = attrs[offset + 4:offset + size - 1].decode()
            elif kind & 0xFF == 7:  # IPSET_ATTR_DATA > IPSET_ATTR_IP > IPSET_ATTR_IPADDR_IPV4/6 > the address
                length = struct.unpack_from("=H", attrs, offset + 8)[0]
                address = attrs[offset + 12:offset + 8 + length]
            offset += (size + 3) & ~3
        return name, address

    def recv(self, size: int) -> bytes:
        if not self.answers:
            raise TimeoutError
        return self.answers.pop(0)


def cache(fake: FakeNetlink, timeout: int = 300) -> KernelCache:
    return KernelCache("iptables", timeout, sock=fake)  # type: ignore[arg-type]


def test_remember_sends_one_batch_asking_only_its_last_message_for_an_answer():
    fake = FakeNetlink()
    assert cache(fake).remember([(A4, True), (B4, False), (A6, True)]) == 3
    assert len(fake.sent) == 1
    assert [(cmd, name, address) for cmd, _, name, address in fake.sent[0]] == [
        (10, "p25-block4", A4), (9, "p25-allow4", A4),   # out of the other set first, then into its own
        (10, "p25-allow4", B4), (9, "p25-block4", B4),
        (10, "p25-block6", A6), (9, "p25-allow6", A6)]
    flags = [f for _, f, _, _ in fake.sent[0]]
    assert flags[:-1] == [NLM_F_REQUEST, NLM_F_REQUEST | NLM_F_EXCL] * 2 + [NLM_F_REQUEST]
    assert flags[-1] == NLM_F_REQUEST | NLM_F_EXCL | NLM_F_ACK
    assert not fake.answers                                   # every answer read


def test_remember_counts_entries_already_there_and_entries_a_full_set_refused():
    fake = FakeNetlink({(9, "p25-allow4", A4): IPSET_ERR_EXIST, (9, "p25-block4", B4): IPSET_ERR_HASH_FULL})
    kc = cache(fake)
    assert kc.remember([(A4, True), (B4, False), (A6, False)]) == 1
    assert kc.counts == {"added": 1, "present": 1, "full": 1}


def test_large_batches_go_BATCH_messages_a_send():
    fake = FakeNetlink()
    keys = [(struct.pack("!I", 0xC6120000 + i), True) for i in range(BATCH)]   # 2 messages each
    assert cache(fake).remember(keys) == BATCH
    assert [len(batch) for batch in fake.sent] == [BATCH, BATCH]
    assert all(batch[-1][1] & NLM_F_ACK for batch in fake.sent)


def test_a_missing_set_is_an_error_for_remember_and_nothing_for_forget_and_flush():
    fake = FakeNetlink({(9, "p25-allow4", A4): errno.ENOENT, (10, "p25-block4", A4): errno.ENOENT,
                        (10, "p25-allow6", A6): errno.ENOENT, (4, "p25-allow4", None): errno.ENOENT})
    kc = cache(fake)
    with pytest.raises(CacheError, match="a set of the cache is missing"):
        kc.remember([(A4, True)])
    kc.forget([A4, A6])
    assert [(cmd, name) for cmd, _, name, _ in fake.sent[-1]] == [
        (10, "p25-allow4"), (10, "p25-block4"), (10, "p25-allow6"), (10, "p25-block6")]
    kc.flush()
    assert [(cmd, name, address) for cmd, _, name, address in fake.sent[-1]] == [
        (4, "p25-allow4", None), (4, "p25-block4", None), (4, "p25-allow6", None), (4, "p25-block6", None)]
    assert not fake.answers


def test_no_answer_is_a_cache_error_not_a_hang():
    class Silent(FakeNetlink):
        def recv(self, size):
            raise TimeoutError
    with pytest.raises(CacheError, match="did not answer"):
        cache(Silent()).remember([(A4, True)])


def test_bad_keys_and_arguments_are_refused():
    kc = cache(FakeNetlink())
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        kc.remember([(b"\x01\x02", True)])
    with pytest.raises(ValueError, match="unknown backend"):
        KernelCache("auto", 300)
    with pytest.raises(ValueError, match="1 to 86400"):
        KernelCache("iptables", 0, sock=FakeNetlink())  # type: ignore[arg-type]


class Nft:
    """Records nft batches; a batch holding one of `refuse` fails as nft would."""

    def __init__(self, refuse: dict[str, str] | None = None):
        self.refuse = refuse or {}
        self.batches: list[str] = []

    def __call__(self, argv: list[str], stdin: str | None) -> str:
        assert argv == ["nft", "-f", "-"]
        assert stdin is not None
        self.batches.append(stdin)
        for text, error in self.refuse.items():
            if text in stdin:
                raise RuleError(f"nft -f - failed: {error}")
        return ""


def test_nft_remember_is_one_transaction():
    run = Nft()
    kc = KernelCache("nftables", 120, run=run)
    assert kc.remember([(A4, True), (A6, False)]) == 2
    assert run.batches == [
        "add element inet port25_enforcer block4 { 198.18.1.10 }\n"
        "delete element inet port25_enforcer block4 { 198.18.1.10 }\n"
        "add element inet port25_enforcer allow4 { 198.18.1.10 timeout 120s }\n"
        "add element inet port25_enforcer allow6 { 2001:db8:1::10 }\n"
        "delete element inet port25_enforcer allow6 { 2001:db8:1::10 }\n"
        "add element inet port25_enforcer block6 { 2001:db8:1::10 timeout 120s }\n"]


def test_nft_remember_with_a_full_set_adds_what_fits():
    run = Nft({"allow4 { 198.18.1.11 timeout": "Error: Could not process rule: Too many open files in system"})
    kc = KernelCache("nftables", 120, run=run)
    assert kc.remember([(A4, True), (B4, True)]) == 1
    assert len(run.batches) == 3                      # the whole, refused; then each entry in its own
    assert kc.counts == {"added": 1, "present": 0, "full": 1}
    run.refuse = {"allow4": "Error: Could not process rule: No such file or directory"}
    with pytest.raises(CacheError, match="No such file"):
        kc.remember([(A4, True)])


def test_nft_forget_and_flush():
    run = Nft()
    kc = KernelCache("nftables", 120, run=run)
    kc.forget([A4])
    kc.flush()
    assert run.batches == [
        "add element inet port25_enforcer allow4 { 198.18.1.10 }\n"
        "delete element inet port25_enforcer allow4 { 198.18.1.10 }\n"
        "add element inet port25_enforcer block4 { 198.18.1.10 }\n"
        "delete element inet port25_enforcer block4 { 198.18.1.10 }\n",
        "flush set inet port25_enforcer allow4\nflush set inet port25_enforcer block4\n"
        "flush set inet port25_enforcer allow6\nflush set inet port25_enforcer block6\n"]


def test_nft_forget_that_the_kernel_refuses_flushes_everything():
    """The add before each delete cannot go into a full set; then no stale entry may survive: all are flushed."""
    run = Nft({"add element inet port25_enforcer allow4 { 198.18.1.10 }\n":
               "Error: Could not process rule: Too many open files in system"})
    KernelCache("nftables", 120, run=run).forget([A4])
    assert run.batches[-1].startswith("flush set inet port25_enforcer allow4\n")
