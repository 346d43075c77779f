"""The kernel cache's userspace end (--kernel-cache): the worker puts the sources it has judged into the sets the
rules read, so that their later SYNs are accepted or dropped in the kernel and only a source's first SYN per table
generation reaches the queue. Each rule backend writes its own sets (RuleBackend.cache_writer: ipsets over netlink
beside the iptables backend, nft sets beside the nftables backend); this is what the worker and the daemon hold.
"""

from __future__ import annotations

import socket
from typing import Iterable

from .rules import BACKENDS
from .rules.base import Runner, runner_in


def version_of(key: bytes) -> int:
    if len(key) == 4:
        return 4
    if len(key) == 16:
        return 6
    raise ValueError(f"a packed source address has 4 or 16 bytes, not {len(key)}")


class KernelCache:
    """The sets of judged sources the rules read, for the backend `backend_name` ("iptables" or "nftables", the
    backend the daemon chose), each entry living `timeout` seconds.

    What goes in is the caller's (the worker's) decision, and this class takes it as given:
      - an allowed source only if it is bound to no interface and no MAC: the kernel set cannot check a binding,
        so a bound source must always reach the queue;
      - a blocked source only for a real blocked verdict, never for unknown-source or spoofed-source: a cached
        drop of a spoofed address would block its real owner.
    When the table changes, no cached verdict may survive it: forget() the addresses whose verdict changed, or
    flush(), once the new table is in place, and so that no remember() of a verdict from the old table comes after
    (call all of them from the one thread that judges). Not thread-safe.

    netns: write the sets in that named network namespace, else in this process's own. sock: a NETLINK_NETFILTER
    socket the caller opened already (in whatever namespace), which the cache then owns. run: the tool runner
    (tests record the batches).
    """

    def __init__(self, backend_name: str, timeout: int, *, netns: str | None = None,
                 sock: socket.socket | None = None, run: Runner | None = None):
        backend = BACKENDS.get(backend_name)
        if backend is None:
            raise ValueError(f"unknown backend {backend_name!r}; the kernel cache needs iptables or nftables")
        if not 1 <= timeout <= 86400:
            raise ValueError(f"timeout {timeout}: expected 1 to 86400 seconds")
        self.writer = backend(run or runner_in(netns)).cache_writer(timeout, netns, sock)
        # what remember() did, since the start: added, already there (left as they were), refused as the set is full
        self.counts = self.writer.counts

    def remember(self, entries: Iterable[tuple[bytes, bool]]) -> int:
        """Put each (packed source address, allowed?) into its family's allowed or blocked set, with the timeout,
        and out of the other one. An address already there keeps its entry (and its timeout); one that does not
        fit a full set is left out. Returns how many were added; self.counts keeps all three."""
        return self.writer.remember([(version_of(key), key, allowed) for key, allowed in entries])

    def forget(self, keys: Iterable[bytes]) -> None:
        """Delete these addresses from both sets of their family (an address in neither is fine)."""
        self.writer.forget([(version_of(key), key) for key in keys])

    def flush(self) -> None:
        """Empty all four sets."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> KernelCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
