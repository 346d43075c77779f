"""The count keys of the state in etcd, without etcd: a resource's group as its keys spell it, a whole state's
counts, a change's new counts from its deltas."""

from __future__ import annotations

import pytest

from enforcer.core.inventory import Inventory, Pulled, Resource, State
from enforcer.errors import UserError
from enforcer.state.etcd_layout import (RUNNING_GROUPS, Keys, count_holds, count_keys, counted, group_of, group_values,
                                        row_keys)

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
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD", 3)  # a count key keeps its group's first 2 or 3 names
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD_LOW", 2)
    inv = Inventory(resources={r.name: r for r in (vm("a1"), vm("a3"), vm("a4"), vm("a2"), vm("b1", subnet="b"),
                                                   vm("s1", State.STOPPED), vm("s2", State.STOPPED))})
    held = count_keys(KEYS, inv)
    a, b, none, stopped = (KEYS.count("lab", group_of(r)) for r in (vm("x"), vm("x", subnet="b"),
                                                                    vm("x", subnet=None), vm("x", State.STOPPED)))
    assert held == {a: b'[4,["a1","a2","a3"]]', b: b'[1,["b1"]]', stopped: b'[2,["s1","s2"]]'}
    asked: list[int] = []

    def first(subscription: str, group: str, limit: int) -> list[str]:  # group a's names at the snapshot
        asked.append(limit)
        return ["a1", "a2", "a3", "a4"][:limit]

    def change(leaving: dict[str, list[str]], joining: dict[str, list[str]]) -> dict[bytes, bytes | None]:
        groups = {"a": group_of(vm("x")), "b": group_of(vm("x", subnet="b")), "none": group_of(vm("x", subnet=None)),
                  "stopped": group_of(vm("x", State.STOPPED))}
        return counted(KEYS, {("lab", groups[g]): names for g, names in leaving.items()},
                       {("lab", groups[g]): names for g, names in joining.items()}, held.get, first)

    # a0 joins a (before its head's last name: into the head); a new group begins; a group counted down to 0
    # goes; one whose names changed but not its count (s1 out, s0 in) is written all the same: a listing compares it
    assert change({"b": ["b1"], "stopped": ["s1"]}, {"a": ["a0"], "none": ["n1"], "stopped": ["s0"]}) == {
        a: b'[5,["a0","a1","a2"]]', b: None, none: b'[1,["n1"]]', stopped: b'[2,["s0","s2"]]'}
    assert change({}, {"a": ["a9"]}) == {a: b'[5,["a1","a2","a3"]]'}  # past the head: not in it
    assert asked == []  # every head known: no range read
    # a name out of the head: the rest of it is still the first names; out of the 2 it then holds, read again
    assert change({"a": ["a1"]}, {}) == {a: b'[3,["a2","a3"]]'} and asked == []
    held[a] = b'[4,["a2","a3"]]'
    assert change({"a": ["a2"]}, {"a": ["a9"]}) == {a: b'[4,["a1","a3","a4"]]'} and asked == [4]
    with pytest.raises(UserError, match="not \\[count, \\[names\\]\\]; the state is damaged"):
        counted(KEYS, {}, {("lab", group_of(vm("x"))): ["a0"]}, lambda key: b"3", first)


def test_a_count_key_holds_when_its_head_is_the_first_of_its_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD", 3)
    monkeypatch.setattr("enforcer.state.etcd_layout.HEAD_LOW", 2)
    names = ["a", "b", "c", "d"]
    assert count_holds(b'[4,["a","b","c"]]', names) and count_holds(b'[4,["a","b"]]', names)
    assert count_holds(None, []) and count_holds(b'[1,["a"]]', ["a"])
    for wrong in (b'[4,["a"]]', b'[4,["a","c"]]', b'[3,["a","b"]]', b'[4,["a","b","c","d"]]', b"4", b"[4,[1]]", None):
        assert not count_holds(wrong, names), wrong
    assert not count_holds(b'[1,["a"]]', [])
