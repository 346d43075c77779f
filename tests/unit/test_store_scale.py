"""A change costs what it touches: the store reads the rows an operation asks for, through indexes, and writes what
it changed; the lazy, store-backed inventory answers every question as the in-memory one does; a version 1 state
is migrated in place."""

import json
import sqlite3

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import enforcer.state.source as source_module
from enforcer.core import lifecycle
from enforcer.core.inventory import Inventory, pull
from enforcer.core.rows import COUNTED_BY
from enforcer.errors import UserError
from enforcer.state.profiles import load_profile
from enforcer.state.rows import to_doc
from enforcer.state.schema import SCHEMA_1, SCHEMA_VERSION
from enforcer.state.store import Store
from support.states import TODAY, lab_state

PROFILE = load_profile("azure")


class Parses:
    """Counts the stored documents the store parses (every row it reads is parsed once)."""

    def __init__(self, monkeypatch):
        self.n = 0
        original = source_module.from_doc

        def counting(table, text):
            self.n += 1
            return original(table, text)
        monkeypatch.setattr(source_module, "from_doc", counting)


OPERATIONS = [
    ("restart", lambda inv: lifecycle.restart(inv, PROFILE, "devtest-vm")),
    ("add", lambda inv: lifecycle.add_resource(inv, PROFILE, "new-vm", "payg-shop", "vm", ["198.18.9.9"])),
    ("remove", lambda inv: lifecycle.remove_resource(inv, PROFILE, "msdn-vm")),
    ("exempt", lambda inv: lifecycle.run_diagnostic(inv, PROFILE, "devtest-lab", today=TODAY)),
    ("set-type", lambda inv: lifecycle.set_type(inv, PROFILE, "payg-shop", "ea")),
    ("bind", lambda inv: lifecycle.update_resource(inv, PROFILE, "ea-vm", mac="52:54:00:99:99:99")),
]


@pytest.mark.parametrize("what, operation", OPERATIONS, ids=[o[0] for o in OPERATIONS])
def test_a_change_reads_the_same_rows_whatever_the_state_holds(tmp_path, monkeypatch, what, operation):
    """The same change on the lab alone and on the lab with 1,300 more VMs in its subscriptions reads the same
    number of rows (the new VMs sit in no VNet, hold no address the change asks about, egress nowhere)."""
    read = {}
    for extra in (0, 1300):
        store = lab_state(tmp_path / f"state-{extra}.db", extra)
        parses = Parses(monkeypatch)
        store.change(what, operation)
        read[extra] = parses.n
        store.close()
    assert read[0] == read[1300], read
    assert read[0] <= 12, read


def test_what_diagnose_tells_of_a_big_subscription_is_counted_not_read(tmp_path, monkeypatch):
    """The resources that keep their old policy are counted through the index; a few are named, the rest counted."""
    store = lab_state(tmp_path / "state.db", 1300)
    parses = Parses(monkeypatch)
    lines = store.change("diagnose", lambda inv: lifecycle.run_diagnostic(inv, PROFILE, "devtest-lab", today=TODAY))
    pending = [line for line in lines if line.startswith("running resources keep their old policy")]
    assert len(pending) == 1, lines
    named = pending[0].split("again: ", 1)[1].split(" and ")[0].split(", ")
    assert len(named) == lifecycle.LISTED and named[:2] == ["devtest-vm", "vm-00001"], pending
    assert f"and {100 + 1 - lifecycle.LISTED} more" in pending[0], pending  # 1,300 / 13 subscriptions + devtest-vm
    assert any("delegated subnets of VNet 'devnet'" in line for line in lines), lines  # devtest-ase
    assert parses.n <= 6


def test_store_backed_inventory_answers_as_the_in_memory_one(tmp_path):
    store = lab_state(tmp_path / "state.db", 40)
    whole, _ = store.read()  # every row in memory: a MemorySource
    lazy = store.snapshot()
    for sub in sorted(whole.subscriptions):
        assert [r.name for r in lazy.resources_of(sub)] == sorted(r.name for r in whole.resources_of(sub))
        for by in (("pulled", "vnet", "subnet"), ("kind", "egress", "pulled"), ("subscription",)):
            assert lazy.running(by, sub) == whole.running(by, sub)
        for g in whole.running(("pulled", "vnet", "subnet"), sub):
            where = dict(zip(("pulled", "vnet", "subnet"), g, strict=True))
            assert lazy.running_names(sub, where, 5) == whole.running_names(sub, where, 5)
    assert lazy.running(("subscription", "kind", "egress", "pulled")) == \
        whole.running(("subscription", "kind", "egress", "pulled"))
    for vnet in whole.vnets:
        assert sorted(r.name for r in lazy.resources_in(vnet)) == sorted(r.name for r in whole.resources_in(vnet))
    assert [r.name for r in lazy.egressing_through("fw1")] == ["shop-relay"]
    assert sorted(r.name for r in lazy.prefixed()) == ["mcae-vmss"]
    for r in whole.resources.values():
        for a in r.addresses:
            assert lazy.owner_of(a) == whole.owner_of(a) == r.name
    assert lazy.owner_of("198.18.200.200") is None
    assert lazy == whole
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.sampled_from(range(8)), min_size=1, max_size=8), vm=st.sampled_from(
    ["ea-vm", "devtest-vm", "shop-web", "fw1", "mcae-vmss"]))
def test_changes_through_the_store_equal_changes_in_memory(tmp_path_factory, steps, vm):
    """Each operation run through the store (lazy rows, written changes) leaves what it leaves in memory."""
    path = tmp_path_factory.mktemp("s") / "state.db"
    store = lab_state(path)
    memory, _ = store.read()
    ops = [lambda inv, p: lifecycle.restart(inv, p, vm), lambda inv, p: lifecycle.stop(inv, p, vm),
           lambda inv, p: lifecycle.deallocate(inv, p, vm), lambda inv, p: lifecycle.start(inv, p, vm),
           lambda inv, p: lifecycle.run_diagnostic(inv, p, "devtest-lab", apply_now=True, today=TODAY),
           lambda inv, p: lifecycle.set_type(inv, p, "payg-shop", "ea"),
           lambda inv, p: lifecycle.update_resource(inv, p, vm, addresses=["198.18.7.7"]),
           lambda inv, p: lifecycle.remove_resource(inv, p, "shop-relay")]
    for i in steps:
        def op(inv, op=ops[i]):
            return op(inv, PROFILE)
        try:
            memory, said = op(memory)
        except UserError as e:
            with pytest.raises(UserError) as refused:
                store.change("step", op)
            assert str(refused.value) == str(e)
            continue
        assert store.change("step", op) == said
        again, _ = store.read()
        assert again == memory
        lazy = store.snapshot()
        for r in memory.resources.values():  # the address rows follow the documents
            for a in r.addresses:
                assert lazy.owner_of(a) == r.name
        # the counts the triggers keep follow the rows: the same as counting the rows held in memory
        assert lazy.running(COUNTED_BY) == memory.running(COUNTED_BY)
        assert len(lazy.resources) == len(memory.resources)
        store.verify(load_profile)
    store.close()


def test_a_version_1_state_is_migrated_in_place(tmp_path):
    path = tmp_path / "state.db"
    lab, _ = lab_state(tmp_path / "lab.db").read()
    cx = sqlite3.connect(path, isolation_level=None)
    cx.executescript(SCHEMA_1)
    for table in ("subscriptions", "vnets", "resources"):
        for row in getattr(lab, table).values():
            cx.execute(f"INSERT INTO {table} (name, doc) VALUES (?, ?)", (row.name, to_doc(row)))
    cx.execute("PRAGMA application_id = 1345467717")
    cx.execute("PRAGMA user_version = 1")
    cx.execute("PRAGMA journal_mode = WAL")
    cx.close()
    store = Store(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    inv, _ = store.read()
    assert inv == lab
    assert store.snapshot().owner_of("2001:db8:2::10") == "shop-web"
    assert sorted(store.snapshot().running(("vnet",), "payg-shop").values()) == [1, 3]  # shop-blob: no VNet
    assert store.verify(load_profile)["addresses"] == sum(len(r.addresses) for r in lab.resources.values())
    store.close()


def test_state_check_reads_everything_a_command_would_not(lab):
    out = lab("state", "check")
    assert out.startswith(f"{lab.state}: ok (13 subscriptions, 5 vnets, 19 resources, 27 addresses")
    cx = sqlite3.connect(lab.state)
    doc = json.loads(cx.execute("SELECT doc FROM resources WHERE name = 'other-vm'").fetchone()[0])
    doc["addresses"] = ["198.18.5.18", "198.18.5.99"]  # the document says more than the address rows
    cx.execute("UPDATE resources SET doc = ? WHERE name = 'other-vm'", (json.dumps(doc),))
    cx.commit()
    cx.close()
    err = lab("state", "check", expect=2)
    assert "is damaged (the resources name 28 addresses, the address rows hold 27)" in err and err.count("\n") == 1


def test_state_check_finds_counts_that_do_not_match_the_resources(lab):
    """The counts a summary reads are kept by triggers; one changed behind their back is told as damage."""
    lab("state", "check")
    cx = sqlite3.connect(lab.state)
    cx.execute("UPDATE resource_counts SET n = n + 1 WHERE state = 'running' AND subscription = 'payg-shop'")
    cx.commit()
    cx.close()
    err = lab("state", "check", expect=2)
    assert "is damaged (the counts of resources (table resource_counts) do not match the resources)" in err
    assert err.count("\n") == 1


def test_counts_and_names_see_the_changes_made_on_top_of_the_state(tmp_path):
    """An operation asks its questions of the state with its own changes on top: the same answers as an inventory
    held whole that has them already."""
    store = lab_state(tmp_path / "state.db", 60)
    lazy = store.snapshot()
    changed, _ = lifecycle.stop(lazy, PROFILE, "vm-00003")
    changed, _ = lifecycle.add_resource(changed, PROFILE, "late", "devtest-lab", "vm", ["198.18.9.1"])
    changed, _ = lifecycle.remove_resource(changed, PROFILE, "msdn-vm")
    whole = Inventory(changed.profile, dict(changed.subscriptions.items()), dict(changed.vnets.items()),
                      dict(changed.resources.items()))
    for sub in ("devtest-lab", "msdn-dev", "csp-reseller"):
        assert changed.running(("pulled", "vnet", "subnet"), sub) == whole.running(("pulled", "vnet", "subnet"), sub)
        for g in whole.running(("pulled", "vnet", "subnet"), sub):
            where = dict(zip(("pulled", "vnet", "subnet"), g, strict=True))
            assert changed.running_names(sub, where, 50) == whole.running_names(sub, where, 50)
    assert changed.running(("subscription",)) == whole.running(("subscription",))
    assert "late" in changed.running_names("devtest-lab", {"pulled": pull(changed.subscriptions["devtest-lab"]),
                                                           "vnet": None, "subnet": None}, 100)
    store.close()
