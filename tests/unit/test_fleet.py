"""The fleet's pure parts (issue 21, item 3): the gateways read from their records, who is behind a generation,
a change's commit time from its audit key, the apply-delay histogram with clock skew, the --wait value; and
--wait against an SQLite state with no daemon. The real fleet: tests/integration/test_fleet_status.py."""

from __future__ import annotations

import json

import click
import pytest

from enforcer.cli.main import main
from enforcer.cli.wait import DEFAULT_WAIT, Seconds
from enforcer.dataplane.etcd_follow import DELAY_BUCKETS, Delays
from enforcer.state.etcd_gateways import Gateway, behind, commit_time, gateways_of
from enforcer.state.etcd_layout import Keys
from support.paths import LAB


def record(revision: int, at_unix: float = 1000.0, **more) -> bytes:
    return json.dumps({"revision": revision, "applied_revision": revision + 2, "pid": 7, "at": "2026-12-07T10:00:00",
                       "at_unix": at_unix, "version": "0.1.0", **more}).encode()


def test_a_gateway_is_alive_while_its_leased_key_is_there_and_remembered_after():
    keys = {"gw-1": record(40), "gw-1/seen": record(40),   # alive: both records
            "gw-2/seen": record(31, 900.0),                # its lease expired: the record without one stays
            "gw-3": record(41)}                            # an earlier version: the leased record alone
    fleet = {g.name: g for g in gateways_of(keys)}
    assert list(fleet) == ["gw-1", "gw-2", "gw-3"]
    assert (fleet["gw-1"].alive, fleet["gw-2"].alive, fleet["gw-3"].alive) == (True, False, True)
    assert fleet["gw-2"] == Gateway("gw-2", False, 31, 33, "2026-12-07T10:00:00", 900.0, 7, "0.1.0")
    assert [fleet[n].lag(41) for n in ("gw-1", "gw-2", "gw-3")] == [1, 10, 0]
    assert fleet["gw-3"].lag(40) == 0   # ahead of a generation read earlier: not behind


def test_a_record_another_program_wrote_does_not_break_the_listing():
    typed = json.dumps({"revision": "40", "applied_revision": None, "pid": True, "at_unix": "soon"}).encode()
    keys = {"odd": b"not json", "list": b"[1, 2]", "typed": typed, "x/y/seen": record(1)}
    fleet = {g.name: g for g in gateways_of(keys)}
    assert sorted(fleet) == ["list", "odd", "typed"]   # a key deeper than NAME/seen is none of ours
    assert all(g.revision == 0 and g.alive for g in fleet.values())
    assert fleet["typed"].pid is None and fleet["odd"].at == "?"


def test_behind_names_the_live_gateways_without_the_generation():
    fleet = gateways_of({"a": record(50), "b": record(49), "c/seen": record(10), "d": record(51)})
    assert behind(fleet, 50) == ["b"]          # c's lease expired: not waited for
    assert behind(fleet, 52) == ["a", "b", "d"]
    assert behind(fleet, 0) == [] and behind([], 50) == []


def test_the_gateway_keys_sit_where_the_gateway_role_may_write():
    keys = Keys("lab")
    assert keys.gateway("gw-1") == b"/lab/gateways/gw-1"
    assert keys.gateway_seen("gw-1") == b"/lab/gateways/gw-1/seen"
    assert keys.gateway_seen("gw-1").startswith(keys.gateways())


def test_a_changes_commit_time_is_in_its_audit_key():
    assert commit_time(b"/lab/audit/01765101600123456789-812-0a0b0c0d") == pytest.approx(1765101600.123456789)
    assert commit_time("01765101600123456789-812-0a0b0c0d") == pytest.approx(1765101600.123)
    assert commit_time(b"/lab/audit/written-by-hand") is None
    assert commit_time(b"/lab/audit/123-1-ab") is None


def test_the_apply_delay_is_commit_to_apply_and_measured_locally_when_the_writer_is_ahead():
    d = Delays()
    assert d.observe(committed=100.0, received=5.0, applied=100.03, now_mono=5.02) == pytest.approx(0.03)
    # the writer's clock 2 s ahead of ours: commit "after" apply; the receipt-to-apply part instead, counted
    assert d.observe(committed=102.0, received=5.0, applied=100.05, now_mono=5.01) == pytest.approx(0.01)
    assert d.observe(committed=None, received=5.0, applied=100.0, now_mono=5.2) == pytest.approx(0.2)
    assert d.observe(committed=0.0, received=0.0, applied=1000.0, now_mono=0.0) == 1000.0  # past every bucket
    view = d.view()
    assert (view["count"], view["skewed"], view["last"]) == (4, 1, 1000.0)
    assert view["sum"] == pytest.approx(1000.24)
    cumulative = dict((bound, n) for bound, n in view["buckets"])
    assert len(cumulative) == len(DELAY_BUCKETS)
    assert (cumulative[0.005], cumulative[0.01], cumulative[0.025], cumulative[0.25], cumulative[300.0]) == \
        (0, 1, 1, 3, 3)


@pytest.mark.parametrize("text", ["-1", "abc", "nan", "inf", "", "1e999"])
def test_a_wait_that_is_not_seconds_is_refused(text):
    with pytest.raises(click.BadParameter, match="not a number of seconds"):
        Seconds().convert(text, None, None)


def test_a_wait_in_seconds_is_taken():
    assert Seconds().convert("2.5", None, None) == 2.5
    assert Seconds().convert("0", None, None) == 0.0
    assert Seconds().convert(DEFAULT_WAIT, None, None) == DEFAULT_WAIT


def test_wait_on_an_sqlite_state_without_a_daemon_says_so_and_keeps_the_change(cli, capsys):
    code = main(["--state", str(cli.state), "apply", str(LAB), "--wait=1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.strip().splitlines() == [f"enforcer: --wait: no daemon follows {cli.state} here: nothing to wait for "
                                        "(the change is committed)"]
    assert "devtest-lab" in out                          # the command's own lines, on stdout
    assert "devtest-vm" in cli("vm", "list")             # and the change is in the state


# A negative number reads as an option to click's parser (a bare --wait takes no value that begins with '-'):
# main() tells it as the value it is.
@pytest.mark.parametrize("value, said", [("--wait=soon", "not a number of seconds"), ("--wait=nan", "not a number"),
                                         ("--wait=-1", "a negative number is not a number of seconds"),
                                         ("--wait=-0.5", "a negative number is not a number of seconds")])
def test_a_bad_wait_is_one_line_exit_2_and_changes_nothing(lab, value, said):
    before = lab("audit", "--json")
    error = lab("vm", "restart", "devtest-vm", value, expect=2)
    assert len(error.strip().splitlines()) == 1 and said in error, error
    assert lab("audit", "--json") == before


def test_a_bare_wait_before_an_argument_takes_it_as_seconds_and_says_how_to_write_it(lab):
    said = lab("vm", "restart", "--wait", "devtest-vm", expect=2)
    assert len(said.strip().splitlines()) == 1 and "after the command's arguments" in said, said


def test_every_command_that_changes_the_state_takes_wait():
    from enforcer.cli.main import cli
    changing = [("apply",), ("subscription", "add"), ("subscription", "set"), ("subscription", "set-type"),
                ("subscription", "remove"), ("diagnose",), ("exemption", "revoke"), ("exemption", "request"),
                ("exemption", "grant"), ("vm", "add"), ("vm", "bind"), ("vm", "start"), ("vm", "stop"),
                ("vm", "deallocate"), ("vm", "restart"), ("vm", "remove"), ("vnet", "add"), ("vnet", "bind"),
                ("vnet", "remove"), ("vnet", "subnet-add"), ("vnet", "subnet-remove"), ("vnet", "refresh-delegated"),
                ("state", "copy"), ("account", "add")]
    ctx = click.Context(cli)
    for path in changing:
        command: click.Command = cli
        for word in path:
            assert isinstance(command, click.Group)
            command = command.get_command(ctx, word)
        assert "wait_seconds" in [p.name for p in command.params], path


def test_an_unknown_option_elsewhere_is_still_told_as_such(lab):
    assert "No such option '-1'" in lab("vm", "list", "-1", expect=2)
    assert "No such option '--wait'" in lab("vm", "list", "--wait=-1", expect=2)   # a listing waits for nothing


def test_gateway_forget_on_an_sqlite_state_is_one_line(lab):
    said = lab("gateway", "forget", "gw-1", expect=2)
    assert len(said.strip().splitlines()) == 1 and "SQLite state" in said and "etcd://" in said, said
