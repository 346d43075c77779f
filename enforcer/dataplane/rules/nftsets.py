"""The nftables backend's kernel cache writer: the four sets inside our table, written with one `nft -f -` batch a
call (a transaction: all of it or nothing)."""

from __future__ import annotations

import ipaddress

from .base import CacheError, CacheWriter, RuleError, Runner


class NftSetWriter(CacheWriter):
    """The four sets of our nftables table, one `nft -f -` transaction a call."""

    def __init__(self, sets: dict[tuple[int, bool], str], timeout: int, table: str, run: Runner):
        super().__init__(sets, timeout)
        self.table = table
        self.run = run

    def _element(self, verb: str, key: tuple[int, bool], address: str, timeout: int | None = None) -> str:
        after = f" timeout {timeout}s" if timeout is not None else ""
        return f"{verb} element inet {self.table} {self.sets[key]} {{ {address}{after} }}\n"

    def _out_of(self, key: tuple[int, bool], address: str) -> str:
        """Delete an element whether or not it is there: nft 1.0.6 has no `destroy element`, and deleting a
        missing one fails the transaction, so add it first (in the same transaction: nothing sees it)."""
        return self._element("add", key, address) + self._element("delete", key, address)

    def remember_batch(self, entries: list[tuple[int, bytes, bool]]) -> str:
        batch = []
        for version, key, allowed in entries:
            address = str(ipaddress.ip_address(key))
            batch.append(self._out_of((version, not allowed), address))
            batch.append(self._element("add", (version, allowed), address, self.timeout))
        return "".join(batch)

    def remember(self, entries: list[tuple[int, bytes, bool]]) -> int:
        """One transaction for all; if the kernel refuses it (a full set fails the whole transaction), each entry
        in its own, and those that do not fit are counted as full. nft does not say whether an element was there
        already: such an entry counts as added."""
        if not entries:
            return 0
        try:
            self.run(["nft", "-f", "-"], self.remember_batch(entries))
            added = len(entries)
        except RuleError:
            added = 0
            for entry in entries:
                try:
                    self.run(["nft", "-f", "-"], self.remember_batch([entry]))
                    added += 1
                except RuleError as e:
                    if "Too many open files" not in str(e):  # ENFILE: the set is full
                        raise CacheError(str(e)) from None
                    self.counts["full"] += 1
        self.counts["added"] += added
        return added

    def forget_batch(self, keys: list[tuple[int, bytes]]) -> str:
        return "".join(self._out_of((version, allowed), str(ipaddress.ip_address(key)))
                       for version, key in keys for allowed in (True, False))

    def forget(self, keys: list[tuple[int, bytes]]) -> None:
        """One transaction; if the kernel refuses it (the add before a delete cannot go into a full set), all
        sets are flushed instead: a stale entry must not survive."""
        if not keys:
            return
        try:
            self.run(["nft", "-f", "-"], self.forget_batch(keys))
        except RuleError:
            self.flush()

    def flush_batch(self) -> str:
        return "".join(f"flush set inet {self.table} {name}\n" for name in self.sets.values())

    def flush(self) -> None:
        """All four sets in one transaction: atomic."""
        try:
            self.run(["nft", "-f", "-"], self.flush_batch())
        except RuleError as e:
            raise CacheError(str(e)) from None

    def close(self) -> None:
        pass
