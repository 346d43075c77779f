"""The daemon's table (Keeper): compiled from the state, and patched from the audit log after every change, it
says for every address what decide() says, binds what the inventory binds, and equals a fresh compile."""

import collections
import fcntl
import multiprocessing
import os
import sqlite3
import threading
from dataclasses import replace
from multiprocessing.reduction import send_handle

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from support.states import TODAY, lab_state

from enforcer.core import lifecycle
from enforcer.core.inventory import State
from enforcer.core.policy import decide
from enforcer.core.verdicts import binding_of, pack
from enforcer.dataplane._fastpath import Judge, View
from enforcer.dataplane.keeper import SEALS, Keeper, mapped
from enforcer.dataplane.worker import Explainer, WorkerControl
from enforcer.errors import UserError
from enforcer.state.profiles import load_profile
from enforcer.state.store import Store

PROFILE = load_profile("azure")
INTERNET = "198.19.25.25"
PROBES = ["198.18.9.9", "2001:db8:1000::ffff", "198.18.4.20", "198.18.4.31", "198.18.4.32", "2001:db8:7::1"]


def compiled(store) -> Keeper:
    keeper = Keeper(PROFILE)
    inv = store.snapshot()
    keeper.compile(store, inv)
    keeper.generation, keeper.position = store.generation(), store.audit_position()
    store.end_snapshot()
    return keeper


def patched(store, keeper: Keeper) -> set[bytes]:
    inv = store.snapshot()
    patch = keeper.patch(inv, store.changed_since(keeper.position, 10_000))
    keeper.generation, keeper.position = store.generation(), store.audit_position()
    store.end_snapshot()
    assert not patch.full
    return patch.keys


def agrees(store, keeper: Keeper) -> None:
    """Every registered address and a few probes: the image's verdict is decide()'s, its binding the inventory's."""
    inv, _ = store.read()
    view = View(keeper.table.image(keeper.generation))
    verdicts = keeper.verdicts.entries
    sources = [a.split("/")[0] for r in inv.resources.values() for a in r.addresses] + PROBES
    for source in sources:
        decided = decide(inv, PROFILE, source, INTERNET, 25)
        verdict = view.lookup(pack(source))
        if decided.resource is None:
            assert verdict == -1, source
            continue
        assert verdict >= 0 and view.allows(verdict) == decided.allow, source
        assert (verdicts[verdict].allow, verdicts[verdict].code, verdicts[verdict].subscription) == \
            (decided.allow, decided.code, decided.subscription), source
        binding = binding_of(inv, inv.resources[decided.resource])
        _, interface, mac = view.entry(pack(source))
        assert (interface, mac) == ((binding.interface, binding.mac) if binding else (None, None)), source


def same_table(a: Keeper, b: Keeper, store) -> None:
    inv, _ = store.read()
    va, vb = View(a.table.image(0)), View(b.table.image(0))
    for source in [x.split("/")[0] for r in inv.resources.values() for x in r.addresses] + PROBES:
        ea, eb = va.entry(pack(source)), vb.entry(pack(source))
        if ea is None or eb is None:
            assert ea == eb, source
            continue
        assert a.verdicts.entries[ea[0]].code == b.verdicts.entries[eb[0]].code and ea[1:] == eb[1:], source
    assert len(a.table) == len(b.table)


def test_compiled_from_the_state_it_agrees_with_decide(tmp_path):
    store = lab_state(tmp_path / "state.db", 300)
    keeper = compiled(store)
    agrees(store, keeper)
    assert len(keeper.table) == sum(len(r.addresses) for r in store.read()[0].resources.values())


OPERATIONS = [
    lambda inv, vm: lifecycle.restart(inv, PROFILE, vm),
    lambda inv, vm: lifecycle.stop(inv, PROFILE, vm),
    lambda inv, vm: lifecycle.deallocate(inv, PROFILE, vm),
    lambda inv, vm: lifecycle.start(inv, PROFILE, vm),
    lambda inv, vm: lifecycle.run_diagnostic(inv, PROFILE, "devtest-lab", apply_now=True, today=TODAY),
    lambda inv, vm: lifecycle.set_type(inv, PROFILE, "ea-prod", "payg", apply_now=True),
    lambda inv, vm: lifecycle.update_resource(inv, PROFILE, vm, addresses=["198.18.7.7", "2001:db8:7::7"]),
    lambda inv, vm: lifecycle.update_resource(inv, PROFILE, vm, mac="52:54:00:99:99:99", interface="v9"),
    lambda inv, vm: lifecycle.update_resource(inv, PROFILE, vm, mac=None, interface=None),
    lambda inv, vm: lifecycle.remove_resource(inv, PROFILE, vm),
    lambda inv, vm: lifecycle.add_resource(inv, PROFILE, vm + "-2", "payg-shop", "vm", ["198.18.8.8"],
                                           egress="fw1"),
    lambda inv, vm: lifecycle.set_vnet_interface(inv, PROFILE, "shop", "v7"),
    lambda inv, vm: lifecycle.update_resource(inv, PROFILE, vm, addresses=["198.18.4.32/28"]),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, len(OPERATIONS) - 1),
                                st.sampled_from(["ea-vm", "fw1", "shop-web", "shop-relay", "mcae-vmss", "vm-00003"])),
                      min_size=1, max_size=10))
def test_patched_after_every_change_it_agrees_and_equals_a_fresh_compile(tmp_path_factory, steps):
    store = lab_state(tmp_path_factory.mktemp("k") / "state.db", 30)
    keeper = compiled(store)
    for i, vm in steps:
        try:
            store.change("step", lambda inv, i=i, vm=vm: OPERATIONS[i](inv, vm))
        except UserError:
            continue
        patched(store, keeper)
        agrees(store, keeper)
    same_table(keeper, compiled(store), store)
    store.close()


def test_a_patch_touches_the_addresses_of_what_changed_and_its_dependents(tmp_path):
    store = lab_state(tmp_path / "state.db", 100)
    keeper = compiled(store)
    store.change("stop", lambda inv: lifecycle.stop(inv, PROFILE, "devtest-vm"))
    assert patched(store, keeper) == {pack("198.18.3.10"), pack("2001:db8:3::10")}
    store.change("stop fw1", lambda inv: lifecycle.stop(inv, PROFILE, "fw1"))  # shop-relay egresses through it
    assert patched(store, keeper) == {pack(a) for a in ("198.18.1.4", "2001:db8:1::4", "198.18.2.12",
                                                        "2001:db8:2::12")}
    agrees(store, keeper)


def test_an_address_validation_would_refuse_stops_the_compile_naming_its_resource(tmp_path):
    store = lab_state(tmp_path / "state.db")
    store.close()
    cx = sqlite3.connect(tmp_path / "state.db")
    cx.execute("UPDATE addresses SET address = '2001:db8:2::11%1' WHERE address = '2001:db8:2::11'")
    cx.commit()
    cx.close()
    store = Store(tmp_path / "state.db")
    with pytest.raises(UserError, match=r"cannot be compiled into a table: resource 'shop-mx': .*enforcer vm show"):
        compiled(store)


def test_the_published_image_is_sealed_and_maps_read_only(tmp_path):
    store = lab_state(tmp_path / "state.db")
    keeper = compiled(store)
    fd = keeper.publish()
    try:
        view = mapped(fd)
        assert view.generation == keeper.generation and view.lookup(pack("198.18.1.10")) >= 0
        with pytest.raises(PermissionError):
            os.write(fd, b"x")  # sealed: nobody changes a table a worker judges with
    finally:
        os.close(fd)


def memfd_with(image: bytes, seals: int) -> int:
    fd = os.memfd_create("table", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, image)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.mark.parametrize("left_out", [None, "SHRINK", "GROW", "WRITE", "SEAL", "all"])
def test_a_worker_maps_only_a_sealed_memfd(left_out):
    """A View cannot guard against the file under its mapping being rewritten or cut short (SIGBUS): a
    descriptor missing any of publish()'s seals is refused, one sealed like publish()'s accepted."""
    keeper = Keeper(PROFILE)
    keeper.table.put(pack("198.18.0.1"), 0)
    image = keeper.table.image(3)
    seals = 0 if left_out == "all" else SEALS & ~(getattr(fcntl, f"F_SEAL_{left_out}") if left_out else 0)
    fd = memfd_with(image, seals)
    try:
        if left_out is None:
            assert mapped(fd).lookup(pack("198.18.0.1")) == 0
        else:
            missing = ["SHRINK", "GROW", "WRITE", "SEAL"] if left_out == "all" else [left_out]
            with pytest.raises(ValueError, match=r"^the table handed over is not sealed \(missing F_SEAL_" +
                               ", F_SEAL_".join(missing) + r"\)$"):
                mapped(fd)
    finally:
        os.close(fd)


def test_a_file_that_cannot_be_sealed_is_refused(tmp_path):
    path = tmp_path / "image"
    path.write_bytes(Keeper(PROFILE).table.image(1))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="not a sealable memfd"):
            mapped(fd)
    finally:
        os.close(fd)


def test_the_worker_keeps_its_table_when_handed_an_unsealed_one(tmp_path, caplog):
    """What the daemon's hand-over does (a request on the pipe, the descriptor after it), into a real
    WorkerControl: an unsealed memfd is logged and refused, the Judge keeps its view, and a sealed one is
    then taken."""
    keeper = Keeper(PROFILE)
    keeper.table.put(pack("198.18.0.1"), 0)
    judge = Judge(View(keeper.table.image(1)))
    daemon_end, worker_end = multiprocessing.Pipe()
    control = WorkerControl(3, judge, collections.deque(), worker_end, Explainer(str(tmp_path / "state.db")))
    thread = threading.Thread(target=control.serve, daemon=True)
    thread.start()
    try:
        for generation, seals, taken in ((2, 0, 1), (2, SEALS, 2)):
            fd = memfd_with(keeper.table.image(generation), seals)
            try:
                daemon_end.send((generation, "table", (generation, [])))
                send_handle(daemon_end, fd, os.getpid())
                assert daemon_end.poll(10)
                assert daemon_end.recv() == (generation, taken)
                assert judge.view.generation == taken
            finally:
                os.close(fd)
    finally:
        control.stop.set()
        thread.join(5)
    assert [r.getMessage() for r in caplog.records if r.name == "enforcer.worker"] == \
        ["queue 3: table 2 failed, keeping generation 1: the table handed over is not sealed (missing "
         "F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_SEAL)"]


def test_a_change_the_table_cannot_hold_leaves_it_whole(tmp_path):
    """An audited change that carries what validation refuses (written past it): the patch refuses it before it
    writes anything, so the daemon goes on with the table it had."""
    store = lab_state(tmp_path / "state.db")
    keeper = compiled(store)
    before = keeper.table.image(0)

    def planted(inv):
        shop_web = replace(inv.resources["shop-web"], state=State.STOPPED)  # a good change and a bad one
        shop_mx = replace(inv.resources["shop-mx"], addresses=("2001:db8:2::11%1",))
        return inv.put(shop_web, shop_mx), None
    store.change("plant", planted)
    with pytest.raises(UserError, match=r"cannot be compiled into a table: resource 'shop-mx'"):
        patched(store, keeper)
    assert keeper.table.image(0) == before
