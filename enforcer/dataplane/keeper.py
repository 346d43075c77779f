"""The verdict table the daemon keeps: compiled from the state when the daemon starts (and on request), patched from
the audit log after every change, handed to the workers as a read-only image in shared memory.

The table (`_fastpath.Table`, C) maps each registered address to a verdict (a number), and a bound address to
where its packets must come from; `Verdicts` says what each verdict means. Compiling reads every address once; a patch
reads the rows a change names (and the resources that depend on them: an appliance's, a VNet's) and rewrites
their addresses, so that its cost grows with the change, not the inventory.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..core.inventory import Inventory, Resource
from ..core.profile import Profile
from ..core.validate import check_row
from ..core.verdicts import UNKNOWN, Judged, Verdict, Verdicts, hw_mac, judged, judged_alike, packed_address
from ..errors import UserError
from ..state.store import Changed
from ._fastpath import Table, View

# What publish() puts on the memfd and mapped() requires: nobody can write, shrink or grow the image a worker
# judges with (a shrunk file faults the mapping: SIGBUS), nor take the seals off
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
# Past this many audit rows since the last patch, reading them costs more than reading the state afresh.
PATCH_LIMIT = 50_000
# One write to the table: packed address, prefix length (None: a host), verdict (None: remove), interface, MAC
Write = tuple[bytes, "int | None", "int | None", "str | None", "bytes | None"]


class AddressRows(Protocol):
    """Where a compile reads every address from: SQLite's Store, or an etcd state at one revision."""
    def address_rows(self) -> Iterator[tuple[str, str, int | None, str, str | None]]: ...


@dataclass
class Patch:
    """What one reload did: the addresses whose verdict may have changed (the kernel cache forgets them), and
    whether the internal destinations (the rules) may have."""
    keys: set[bytes] = field(default_factory=set)
    rules: bool = False
    full: bool = False


class Keeper:
    """The daemon's table and what its verdicts mean, at one generation of the state."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.table = Table()
        self.verdicts = Verdicts()
        self.generation = 0
        self.position = 0  # the audit row the table is patched up to

    # ------------------------------------------------------------ whole

    def compile(self, store: AddressRows, inv: Inventory) -> Patch:
        """Every address of the state, in one pass over its address rows (`inv`: the same snapshot, read lazily
        for the few rows the verdicts depend on: the appliances, the VNets' interfaces). Raises a UserError
        naming the resource whose row the table cannot hold."""
        table, verdicts = Table(), Verdicts()
        for sub in inv.subscriptions.values():
            check_row(self.profile, "subscriptions", sub)
        interfaces = {v.name: v.interface for v in inv.vnets.values() if v.interface}
        verdict_of_key: dict[str, int] = {}  # what assess() depends on (the address row's `judged`) -> verdict
        put, inet_pton, AF_INET, AF_INET6 = table.put, socket.inet_pton, socket.AF_INET, socket.AF_INET6
        name = "?"
        try:
            for address, name, plen, judged_text, bound in store.address_rows():
                verdict = verdict_of_key.get(judged_text)
                if verdict is None:
                    verdict = verdict_of_key[judged_text] = self._judge_key(inv, verdicts, name, judged_text)
                if bound is None and plen is None:  # most addresses: a host, bound to nothing
                    put(inet_pton(AF_INET6 if ":" in address else AF_INET, address), verdict)
                else:
                    self._write_bound(table, interfaces, address, verdict, bound)
        except (OSError, ValueError, KeyError, TypeError) as e:  # what validation refuses, written past it
            raise UserError(f"the state cannot be compiled into a table: resource {name!r}: {e}; fix it "
                            f"(enforcer vm show {name})") from None
        table.set_allowed(verdicts.allow_flags())
        self.table, self.verdicts = table, verdicts
        return Patch(full=True, rules=True)

    def _judge_key(self, inv: Inventory, verdicts: Verdicts, name: str, text: str) -> int:
        """The verdict of what an address row's `judged` says: its resource's row as far as assess() reads it,
        checked against the profile first."""
        key = Judged.decode(text)
        check_row(self.profile, "resources", key.resource(name))
        return verdicts.number(*judged_alike(inv, self.profile, key))

    @staticmethod
    def _write_bound(table: Table, interfaces: dict[str, str], address: str, verdict: int, bound: str | None) -> None:
        """A prefix, or an address bound to an interface (its own, or its VNet's) and/or a MAC."""
        vnet, interface, mac = json.loads(bound) if bound is not None else (None, None, None)
        interface = interface or (interfaces.get(vnet) if vnet is not None else None)
        packed, plen = packed_address(address)
        if plen is None:
            table.put(packed, verdict, interface, hw_mac(mac))
        else:
            table.put_prefix(packed, plen, verdict, interface, hw_mac(mac))

    def fill(self, inv: Inventory) -> None:
        """Every resource of an inventory held in memory (a test's, a benchmark's fleet), as compile() would."""
        self.table, self.verdicts = Table(), Verdicts()
        for r in inv.resources.values():
            for write in self._writes(inv, None, r):
                self._write(*write)
        self.table.set_allowed(self.verdicts.allow_flags())

    def view(self) -> View:
        """The table as a worker sees it (an image in this process's memory)."""
        return View(self.table.image(self.generation))

    def verdict(self, view: View, source: bytes) -> Verdict:
        """What `view` says of a source: its verdict (UNKNOWN for an unregistered source)."""
        verdict = view.lookup(source)
        return self.verdicts.entries[verdict] if verdict >= 0 else UNKNOWN

    # ------------------------------------------------------------ a change

    def patch(self, inv: Inventory, changes: Iterable[Changed]) -> Patch:
        """Apply what changed since the last patch; `inv` is the snapshot the changes were read in."""
        patch, held, interfaces = _read(changes)
        if patch.full:
            return patch
        touched = dict(held)
        for name in held:  # an appliance's dependents are judged by its row
            for dependent in inv.egressing_through(name):
                touched.setdefault(dependent.name, dependent)
        for vnet in interfaces:  # a VNet's interface binds its resources
            for member in inv.resources_in(vnet):
                touched.setdefault(member.name, member)
        # every address checked and judged first, then written: a change the table cannot hold leaves it whole
        writes = [w for name, before in touched.items() for w in self._writes(inv, before, inv.resources.get(name))]
        for write in writes:
            self._write(*write)
            patch.keys.add(write[0])
        self.table.set_allowed(self.verdicts.allow_flags())
        return patch

    def _writes(self, inv: Inventory, before: Resource | None, after: Resource | None) -> list[Write]:
        """What the table must do for one resource: drop the addresses it no longer holds, (re)write the others."""
        keep = set(after.addresses) if after is not None else set()
        row = after if after is not None else before
        name = row.name if row is not None else "?"
        try:
            writes: list[Write] = [(*packed_address(a), None, None, None)
                                          for a in (before.addresses if before is not None else ()) if a not in keep]
            if after is not None:
                (allow, decided_by, code), binding = judged(inv, self.profile, after)
                verdict = self.verdicts.number(allow, decided_by, code)
                interface, hw = (binding.interface, binding.mac) if binding is not None else (None, None)
                writes += [(*packed_address(a), verdict, interface, hw) for a in after.addresses]
        except (OSError, ValueError) as e:  # what validation refuses, written past it
            raise UserError(f"the state cannot be compiled into a table: resource {name!r}: {e}; fix it "
                            f"(enforcer vm show {name})") from None
        return writes

    def _write(self, packed: bytes, plen: int | None, verdict: int | None, interface: str | None,
               hw: bytes | None) -> None:
        if verdict is None:
            self.table.remove(packed) if plen is None else self.table.remove_prefix(packed, plen)
        elif plen is None:
            self.table.put(packed, verdict, interface, hw)
        else:
            self.table.put_prefix(packed, plen, verdict, interface, hw)

    # ------------------------------------------------------------ handing it over

    def publish(self) -> int:
        """The table's image in a sealed memfd (read-only for every process that maps it): its descriptor."""
        size = self.table.nbytes
        fd = os.memfd_create(f"enforcer-table-{self.generation}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size) as memory:  # written in place: no copy of the image on the way
                self.table.image_into(memory, self.generation)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _read(changes: Iterable[Changed]) -> tuple[Patch, dict[str, Resource | None], set[str]]:
    """What a run of changes means for the table: the patch so far (rules, or a whole compile), each changed
    resource as the table holds it (its row before its first change), and the VNets whose interface changed."""
    patch = Patch()
    held: dict[str, Resource | None] = {}
    interfaces: set[str] = set()
    for change in changes:
        b, a = change.before, change.after
        if change.kind == "resource":
            held.setdefault(change.name, b)
        elif change.kind == "vnet":
            patch.rules |= (b and b.prefixes) != (a and a.prefixes)
            if (b and b.interface) != (a and a.interface):
                interfaces.add(change.name)
        elif change.kind == "setting":
            patch.rules = True
            patch.full |= change.name == "profile"
    return patch, held, interfaces


def mapped(fd: int) -> View:
    """A worker's view of a published image: mapped read-only (the pages are the daemon's memfd's, shared).
    Raises ValueError for a descriptor that is not sealed as publish() seals it: a View cannot guard against
    the file under its mapping being rewritten or cut short."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as e:  # EINVAL: a file that cannot be sealed (not a memfd)
        raise ValueError(f"the table handed over is not a sealable memfd ({e.strerror})") from None
    if seals & SEALS != SEALS:
        missing = [name for name in ("SHRINK", "GROW", "WRITE", "SEAL")
                   if not seals & getattr(fcntl, f"F_SEAL_{name}")]
        raise ValueError(f"the table handed over is not sealed (missing F_SEAL_{', F_SEAL_'.join(missing)})")
    size = os.fstat(fd).st_size
    return View(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ))
