"""The counts of running resources in etcd (counts/SUB/GROUP and index/group/SUB/GROUP/NAME, kept by each change):
the same answers as SQLite's resource_counts after a seeded sequence of changes made to both, a change that races
another in a group it counted or listed run again (no count lost), a damaged count found by `state check`, and a
state copied SQLite -> etcd -> SQLite with the same status. One etcd member for the module, a prefix per test."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from enforcer.core import lifecycle
from enforcer.core.inventory import Inventory, State
from enforcer.core.rows import COUNTED_BY
from enforcer.errors import UserError
from enforcer.state.etcd_client import parse_url
from enforcer.state.etcd_layout import HEAD, HEAD_LOW, count_keys, group_of
from enforcer.state.etcd_store import EtcdSource, EtcdStore
from enforcer.state.profiles import load_profile
from enforcer.state.store import Store
from support.cli import Cli
from support.etcd import Etcd, running_etcd
from support.paths import LAB

PROFILE = load_profile("azure")
SUBSCRIPTIONS = {"dev": "devtest", "shop": "payg", "corp": "ea"}
BY = (("subscription", "kind", "egress", "pulled"), ("pulled", "vnet", "subnet"), COUNTED_BY, ("vnet",))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as member:
        yield member


@pytest.fixture
def store(etcd: Etcd) -> Iterator[EtcdStore]:
    s = EtcdStore(parse_url(etcd.url(f"c/{uuid.uuid4().hex[:12]}")))
    try:
        yield s
    finally:
        s.close()


Operation = Callable[[Inventory], tuple[Inventory, Any]]


def _furnished(inv: Inventory, name: str) -> Inventory:
    """Subscription `name` added, with a VNet NAME-net of two subnets a and b."""
    i = list(SUBSCRIPTIONS).index(name)
    inv, _ = lifecycle.add_subscription(inv, PROFILE, name, SUBSCRIPTIONS[name])
    inv, _ = lifecycle.add_vnet(inv, PROFILE, f"{name}-net", name, [f"198.18.{i}.0/24"])
    for j, subnet in enumerate(("a", "b")):
        inv, _ = lifecycle.add_subnet(inv, PROFILE, f"{name}-net", subnet, f"198.18.{i}.{j * 128}/25", False)
    return inv


def _setup(inv: Inventory) -> tuple[Inventory, None]:
    for name in SUBSCRIPTIONS:
        inv = _furnished(inv, name)
    return inv, None


def _pick(names: Any, k: int) -> str | None:
    """The k-th of `names` sorted, round: a step's choice drawn before it runs, the same on each backend (and on
    each run of a change that conflicted)."""
    ordered = sorted(names)
    return ordered[k % len(ordered)] if ordered else None


def _on_one(step: Callable[..., Any]) -> Callable[[int], Operation]:
    def drawn(k: int) -> Operation:
        def run(inv: Inventory) -> tuple[Inventory, Any]:
            name = _pick(inv.resources, k)
            return (inv, None) if name is None else step(inv, PROFILE, name)
        return run
    return drawn


def _on_sub(step: Callable[..., Any], **kw: Any) -> Callable[[int], Operation]:
    return lambda k: lambda inv: step(inv, PROFILE, _pick(SUBSCRIPTIONS, k), **kw)


def _add_drawn(k: int) -> Operation:
    """Most to one place (shop's subnet a, running), so that groups grow past the heads their count keys hold."""
    sub = ("shop", "shop", "shop", "dev", "corp")[k % 5]
    n, i = k % 1000, list(SUBSCRIPTIONS).index(sub)
    vnet, subnet = (None, None) if k // 10 % 10 < 2 else (f"{sub}-net", "b" if k // 100 % 4 == 0 else "a")
    address = f"198.18.{i}.{n % 120 + 1 + (128 if subnet == 'b' else 0)}" if vnet else f"198.19.{n // 250}.{n % 250}"
    state = State.DEALLOCATED if k // 20 % 5 == 0 else State.RUNNING
    return lambda inv: lifecycle.add_resource(inv, PROFILE, f"vm{n:03d}", sub, "vm", [address], vnet, subnet,
                                              state=state)


def _move_drawn(k: int) -> Operation:
    def run(inv: Inventory) -> tuple[Inventory, Any]:
        name = _pick(inv.resources, k)
        r = inv.resources[name] if name else None
        if r is None or r.vnet is None:
            return inv, None
        return inv.put(replace(r, subnet="b" if r.subnet == "a" else "a")), None  # the counts do not judge it
    return run


def _revoke_drawn(k: int) -> Operation:
    def run(inv: Inventory) -> tuple[Inventory, Any]:
        name = _pick([s.name for s in inv.subscriptions.values() if s.exempt], k)
        return (inv, None) if name is None else lifecycle.revoke_exemption(inv, PROFILE, name, apply_now=k % 2 == 0)
    return run


def _set_type_drawn(k: int) -> Operation:
    type_word = ("payg", "devtest", "ea", "msdn")[k // 7 % 4]
    return lambda inv: lifecycle.set_type(inv, PROFILE, _pick(SUBSCRIPTIONS, k), type_word, apply_now=k % 2 == 0)


def _gone_and_back_drawn(k: int) -> Operation:
    def run(inv: Inventory) -> tuple[Inventory, Any]:
        name = _pick(SUBSCRIPTIONS, k)
        for r in list(inv.resources_of(name)):
            inv = inv.removed("resources", r.name)
        for v in list(inv.vnets_of(name)):
            inv = inv.removed("vnets", v.name)
        inv, _ = lifecycle.remove_subscription(inv, PROFILE, name)
        return _furnished(inv, name), None
    return run


# What a step does, drawn with a number; and how often, against the others.
STEPS: list[tuple[str, Callable[[int], Operation], int]] = [
    ("add", _add_drawn, 16), ("remove", _on_one(lifecycle.remove_resource), 2), ("start", _on_one(lifecycle.start), 2),
    ("stop", _on_one(lifecycle.stop), 2), ("deallocate", _on_one(lifecycle.deallocate), 1),
    ("restart", _on_one(lifecycle.restart), 2), ("move", _move_drawn, 2),
    ("diagnose", _on_sub(lifecycle.diagnose, apply_now=False), 2), ("revoke", _revoke_drawn, 2),
    ("set-type", _set_type_drawn, 1),
    ("subscription gone", _gone_and_back_drawn, 1)]


def _steps(seed: int, count: int) -> Iterator[tuple[str, Operation]]:
    """A seeded sequence of changes: resources added (in a VNet's subnet or none), removed, started, stopped,
    deallocated, moved between subnets, exemptions granted (the diagnostic) and revoked, a subscription's type
    set (applied now or not), a subscription removed with all it holds and added back."""
    rng = random.Random(seed)
    for _ in range(count):
        what, drawn, _ = rng.choices(STEPS, weights=[w for *_, w in STEPS])[0]
        yield what, drawn(rng.randrange(1 << 30))


def _answers(inv: Inventory) -> dict[str, Any]:
    """Every count and name list the sources answer for this state."""
    out: dict[str, Any] = {"resources": inv.source.count("resources")}
    for sub in (None, *SUBSCRIPTIONS):
        for by in BY:
            out[f"running {by} {sub}"] = inv.source.running(by, sub)
        if sub is None:
            continue
        for group in inv.source.running(COUNTED_BY, sub):
            values = dict(zip(COUNTED_BY, group, strict=True))
            for where in (values, {"pulled": values["pulled"]}, {"vnet": values["vnet"], "subnet": values["subnet"]}):
                for limit in (None, 1, 2):
                    out[f"names {where} {limit}"] = inv.source.running_names(sub, where, limit)
        out[f"names {sub} nothing"] = inv.source.running_names(sub, {"vnet": "no-such-vnet"}, None)
    return out


@pytest.mark.parametrize("head", [(HEAD, HEAD_LOW), (2, 1)])
def test_counts_and_names_agree_with_sqlite_after_a_seeded_sequence(tmp_path: Path, store: EtcdStore,
                                                                    head: tuple[int, int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With count keys that hold their group's first 25 to 50 names (most listings read no range), and 1 to 3
    (many do, and many changes that take a name out of a head read the group's first names again)."""
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD", head[0])
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD_LOW", head[1])
    sqlite = Store(tmp_path / "state.db", create=True)
    try:
        for backend in (sqlite, store):
            backend.change("setup", _setup)
        done: dict[str, int] = {}
        most = 0  # groups of running resources, at the checkpoint that had the most
        for i, (what, operation) in enumerate(_steps(seed=21, count=200)):  # ~1 s a backend
            outcomes = []
            for backend in (sqlite, store):
                try:
                    backend.change(what, operation)
                    outcomes.append("ok")
                except UserError as e:
                    outcomes.append(str(e).replace(store.path, "STATE").replace(str(sqlite.path), "STATE"))
            assert outcomes[0] == outcomes[1], (i, what, outcomes)
            done[what] = done.get(what, 0) + (outcomes[0] == "ok")
            if i % 10 == 9:
                answers = _answers(store.snapshot())
                assert answers == _answers(sqlite.snapshot()), (i, what)
                sqlite.end_snapshot()
                store.verify(load_profile)  # each count key's head: the first of its group's names
                most = max(most, len(answers[f"running {COUNTED_BY} None"]))
        assert all(done.get(what, 0) > 0 for what in ("add", "remove", "stop", "start", "move", "diagnose",
                                                       "revoke", "set-type", "subscription gone")), done
        etcd_answers, sqlite_answers = _answers(store.snapshot()), _answers(sqlite.snapshot())
        assert etcd_answers == sqlite_answers
        assert most >= 5, (most, done)  # the sequence made groups enough to count and list
        assert store.verify(load_profile)["resources"] == len(sqlite.read()[0].resources)
    finally:
        sqlite.close()


def _add(name: str, address: str, subnet: str | None = "a") -> Operation:
    vnet = "shop-net" if subnet else None
    return lambda inv: lifecycle.add_resource(inv, PROFILE, name, "shop", "vm", [address], vnet, subnet)


def _removed(name: str) -> Operation:
    return lambda inv: lifecycle.remove_resource(inv, PROFILE, name)


def _raced(store: EtcdStore, other: EtcdStore, read: Callable[[Inventory], Any], race: Operation,
           write: Operation) -> list[Any]:
    """What `read` found on each run of a change that reads, then writes what `write` does (a row of another
    group); `race` is committed by another writer between the first run's reads and its commit."""
    found: list[Any] = []

    def operation(inv: Inventory) -> tuple[Inventory, Any]:
        found.append(read(inv))
        assert isinstance(inv.source, EtcdSource)  # the names' ranges are read, not compared: no 77k-key compare
        assert not any(start.startswith(store.keys._k("index/group/")) for start, _ in inv.source.ranges)
        if len(found) == 1:
            other.change("race", race)
        return write(inv)
    store.change("raced", operation)
    return found


def test_a_change_racing_one_in_a_group_it_counted_or_listed_runs_again(store: EtcdStore,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An operation lists a group's names (running_names) or counts groups (running), then changes a resource of
    another group; another writer changes what it read in between: a name added to the group it listed, a group
    counted away (its last resource stopped), a group counted from nothing, the names of a listed group changed but
    not its count: each time its transaction fails and it runs again on what the other wrote. And two adds to one
    group: neither count is lost. A count key holds its group's first name only: the listings read the range."""
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD", 1)
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD_LOW", 1)
    store.change("setup", _setup)
    for name, address, subnet in (("vm1", "198.18.1.10", "a"), ("vmb", "198.18.1.200", "b"),
                                  ("vmx", "198.19.0.1", None)):
        store.change("add", _add(name, address, subnet))
    other = EtcdStore(parse_url(store.path))
    in_a = {"vnet": "shop-net", "subnet": "a"}
    by_place = ("vnet", "subnet")

    def counts(inv: Inventory) -> Any:
        return inv.running(by_place, "shop")

    def step(what: Callable[..., Any], name: str) -> Operation:
        return lambda inv: what(inv, PROFILE, name)
    try:
        listed = _raced(store, other, lambda inv: inv.running_names("shop", in_a, 10), _add("vm2", "198.18.1.11"),
                        step(lifecycle.stop, "vmb"))
        assert listed == [["vm1"], ["vm1", "vm2"]]
        counted = _raced(store, other, counts, step(lifecycle.stop, "vmx"), step(lifecycle.start, "vmb"))
        assert counted == [{("shop-net", "a"): 2, (None, None): 1}, {("shop-net", "a"): 2}]  # counted away
        counted = _raced(store, other, counts, step(lifecycle.start, "vmx"), step(lifecycle.stop, "vmb"))
        assert counted == [{("shop-net", "a"): 2, ("shop-net", "b"): 1},  # counted from nothing
                           {("shop-net", "a"): 2, ("shop-net", "b"): 1, (None, None): 1}]
        _raced(store, other, lambda inv: None, _add("vm3", "198.18.1.12"), _add("vm4", "198.18.1.13"))
        assert store.snapshot().running(by_place, "shop") == {("shop-net", "a"): 4, (None, None): 1}  # none lost
        store.change("start", step(lifecycle.start, "vmb"))

        def swap(inv: Inventory) -> tuple[Inventory, None]:  # one out of a, one in: a's count stays 4
            return inv.put(replace(inv.resources["vm1"], subnet="b"), replace(inv.resources["vmb"], subnet="a")), None
        listed = _raced(store, other, lambda inv: inv.running_names("shop", in_a, 10), swap,
                        step(lifecycle.stop, "vmx"))
        assert listed == [["vm1", "vm2", "vm3", "vm4"], ["vm2", "vm3", "vm4", "vmb"]]
    finally:
        other.close()
    inv = store.snapshot()
    assert inv.running(by_place, "shop") == {("shop-net", "a"): 4, ("shop-net", "b"): 1}
    assert inv.running_names("shop", in_a, None) == ["vm2", "vm3", "vm4", "vmb"]
    store.verify(load_profile)


def test_a_count_keys_head_stays_its_groups_first_names(store: EtcdStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A head of 2 or 3 names: a name out of it leaves it shorter, a name past its last one stays out of it (a name
    between may be in the group), and once it is short of 2 it is read again."""
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD", 3)
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD_LOW", 2)
    store.change("setup", _setup)
    for i in range(1, 6):
        store.change("add", _add(f"a{i}", f"198.18.1.{10 + i}"))
    in_a = {"vnet": "shop-net", "subnet": "a"}

    def head() -> bytes | None:
        inv = store.snapshot()
        return store.client.range(store.keys.count("shop", group_of(inv.resources["a3"]))).kvs[0].value

    assert head() == b'[5,["a1","a2","a3"]]'
    for step, then in (("a1", b'[4,["a2","a3"]]'), ("a9", b'[5,["a2","a3"]]'), ("a2", b'[4,["a3","a4","a5"]]'),
                       ("a0", b'[5,["a0","a3","a4"]]')):
        if step in ("a1", "a2"):
            store.change("remove", _removed(step))
        else:
            store.change("add", _add(step, f"198.18.1.{30 + int(step[1])}"))
        assert head() == then, step
        store.verify(load_profile)
    assert store.snapshot().running_names("shop", in_a, 4) == ["a0", "a3", "a4", "a5"]


def test_state_check_finds_a_damaged_count(store: EtcdStore, etcd: Etcd) -> None:
    store.change("setup", _setup)
    for i in range(3):
        store.change("add", _add(f"vm{i}", f"198.18.1.{10 + i}"))
    inv, _ = store.read()
    [(key, value)] = count_keys(store.keys, inv).items()
    assert value == b'[3,["vm0","vm1","vm2"]]' and key == store.keys.count("shop", group_of(inv.resources["vm1"]))
    store.verify(load_profile)
    client = store.client
    named = store.keys.group("shop", group_of(inv.resources["vm1"])) + b"vm1"
    for damage in (client.put(key, b'[4,["vm0","vm1","vm2"]]'), client.put(key, b'[3,["vm0","vm2"]]'),
                   client.delete(key), client.delete(named), client.put(named[:-1] + b"9", b"")):
        assert client.txn([], [damage]).succeeded
        with pytest.raises(UserError, match="address, index or count keys do not match the resources"):
            store.verify(load_profile)
        assert client.txn([], [client.put(key, value), client.put(named, b""), client.delete(named[:-1] + b"9")])
        store.verify(load_profile)


def test_state_copy_to_etcd_and_back_keeps_the_status(tmp_path: Path, store: EtcdStore, capsys) -> None:
    first = Cli(tmp_path / "first.db", capsys)
    first("apply", str(LAB))
    first("diagnose", "devtest-lab")
    first("vm", "restart", "devtest-vm")
    first("exemption", "revoke", "devtest-lab")  # devtest-vm keeps its exemption until it restarts: pending
    first("vm", "stop", "ea-vm")
    url = store.path
    first("state", "copy", str(first.state), url)
    back = Cli(tmp_path / "back.db", capsys)
    back("state", "copy", url, str(back.state))
    etcd = Cli(url, capsys)  # type: ignore[arg-type]

    def status(cli: Cli) -> dict[str, Any]:
        return {k: v for k, v in cli.json("status").items() if k not in ("state", "generation", "daemon", "gateways")}
    assert status(first) == status(etcd) == status(back)
    assert status(first)["running"] > 0
    assert first("diagnose", "devtest-lab") == etcd("diagnose", "devtest-lab")  # its pending restarts: the names
    assert "ok (" in etcd("state", "check")
