"""The count keys of the state in etcd, without etcd: a resource's group as its keys spell it, a whole state's
counts, a change's new counts from its deltas."""

from __future__ import annotations

import pytest

from enforcer.core.inventory import Inventory, Pulled, Resource, State
from enforcer.errors import UserError
from enforcer.state.etcd_store import RUNNING_GROUPS, Keys, count_keys, counted, group_of, group_values, row_keys

KEYS = Keys("p")
PULLED = Pulled("devtest", True, created="2024-01-02")


def vm(name: str, state: State = State.RUNNING, subnet: str | None = "a", pulled: Pulled | None = PULLED) -> Resource:
    return Resource(name, "lab", "vm", (f"198.18.0.{len(name)}",), "net", subnet, state=state, pulled=pulled)


def test_a_group_is_its_values_but_the_subscription_state_first_and_reads_back() -> None:
    r = vm("a1")
    group = group_of(r)
    assert group.encode().startswith(RUNNING_GROUPS)
    assert group_values("lab", group) == {"state": "running", "subscription": "lab", "kind": "vm", "egress": None,
                                          "pulled": PULLED, "vnet": "net", "subnet": "a"}
    assert group_of(vm("a2")) == group != group_of(vm("a3", subnet=None)) != group_of(vm("a4", pulled=None))
    assert not group_of(vm("a5", State.STOPPED)).encode().startswith(RUNNING_GROUPS)
    # its names' range: beside the row's other index keys, named after it
    assert KEYS.group("lab", group) + b"a1" in row_keys(KEYS, "resources", r)
    with pytest.raises(ValueError):
        group_values("lab", group.replace('"vm",', ""))  # one value short: not this version's


def test_a_whole_states_counts_and_a_changes_new_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enforcer.state.etcd_store.HEAD", 2)  # a count key keeps its group's first 2 names
    inv = Inventory(resources={r.name: r for r in (vm("a1"), vm("a3"), vm("a2"), vm("b1", subnet="b"),
                                                   vm("s1", State.STOPPED), vm("s2", State.STOPPED))})
    held = count_keys(KEYS, inv)
    a, b, none, stopped = (KEYS.count("lab", group_of(r)) for r in (vm("x"), vm("x", subnet="b"),
                                                                    vm("x", subnet=None), vm("x", State.STOPPED)))
    assert held == {a: b'[3,["a1","a2"]]', b: b'[1,["b1"]]', stopped: b'[2,["s1","s2"]]'}
    asked: list[tuple[str, str, int]] = []

    def first(subscription: str, group: str, limit: int) -> list[str]:  # the names at the snapshot
        asked.append((subscription, group, limit))
        return {group_of(vm("x")): ["a1", "a2", "a3"]}[group][:limit]

    # b1 moves to a; a new group begins; a group counted down to 0 goes; one whose names changed but not its count
    # (s1 out, s0 in) is written all the same: a listing of its names compares it
    leaving = {("lab", group_of(vm("x", subnet="b"))): ["b1"], ("lab", group_of(vm("x", State.STOPPED))): ["s1"]}
    joining = {("lab", group_of(vm("x"))): ["b1"], ("lab", group_of(vm("x", subnet=None))): ["n1"],
               ("lab", group_of(vm("x", State.STOPPED))): ["s0"]}
    assert counted(KEYS, leaving, joining, held.get, first) == {
        a: b'[4,["a1","a2"]]', b: None, none: b'[1,["n1"]]', stopped: b'[2,["s0","s2"]]'}
    assert asked == []  # every head known: no range read
    # a1 leaves a (3 names, the head 2 of them): the head is read again past what left
    assert counted(KEYS, {("lab", group_of(vm("x"))): ["a1"]}, {}, held.get, first) == {a: b'[2,["a2","a3"]]'}
    assert asked == [("lab", group_of(vm("x")), 3)]
    with pytest.raises(UserError, match="not \\[count, \\[names\\]\\]; the state is damaged"):
        counted(KEYS, leaving, joining, lambda key: b"3", first)
