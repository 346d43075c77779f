"""The state in etcd, through the CLI, against real etcd processes (tests/support/etcd.py): the same output as
SQLite, a round trip between the backends, concurrent writers losing nothing, TLS and authentication errors told
in one line. Each test has a prefix of its own in one etcd member the module shares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from enforcer.state.store import Store
from support.cli import Cli
from support.etcd import Etcd, free_port, running_etcd
from support.paths import LAB, ROOT

LISTINGS = (("vm", "list"), ("subscription", "list"), ("vnet", "list"), ("exemption", "list"))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory):
    with running_etcd(tmp_path_factory.mktemp("etcd")) as member:
        yield member


@pytest.fixture
def url(etcd: Etcd) -> str:
    return etcd.url(f"t/{uuid.uuid4().hex[:12]}")


def sqlite_and_etcd(tmp_path: Path, url: str, capsys) -> tuple[Cli, Cli]:
    return Cli(tmp_path / "state.db", capsys), Cli(url, capsys)  # type: ignore[arg-type]


def same_audit(rows: list[dict]) -> list[tuple]:
    """An audit log without what differs by design: the row ids (etcd: the change's revision), the time, the
    command line (its --state)."""
    return [(r["uid"], r["kind"], r["name"], r["before"], r["after"]) for r in rows]


def judged_table(path: Path) -> list[tuple]:
    store = Store(path)
    try:
        return sorted(store.address_rows(), key=repr)
    finally:
        store.close()


@pytest.mark.parametrize("pages", ["large", "small"])
def test_commands_against_etcd_say_what_they_say_against_sqlite(tmp_path, url, capsys, monkeypatch, pages):
    if pages == "small":  # every listing, table and address read in pages of 3, every index's rows read whole
        monkeypatch.setattr("enforcer.state.etcd_client.PAGE", 3)
        monkeypatch.setattr("enforcer.state.etcd_store.ROW_BY_ROW", 1)
    sqlite, etcd = sqlite_and_etcd(tmp_path, url, capsys)
    for cli in (sqlite, etcd):
        assert cli.json("status")["exists"] is False
        cli("apply", str(LAB))
        cli("diagnose", "devtest-lab")
        cli("vm", "restart", "devtest-vm")
        cli("exemption", "revoke", "devtest-lab")
        cli("diagnose", "devtest-lab")
        cli("vm", "add", "extra-vm", "--subscription", "payg-shop", "--address", "198.18.2.77")
        cli("subscription", "set-type", "trial-eval", "payg")
    for listing in LISTINGS:
        assert etcd.json(*listing) == sqlite.json(*listing), listing
        assert etcd(*listing) == sqlite(*listing), listing
    assert etcd.verdict("devtest-vm", "203.0.113.25") == sqlite.verdict("devtest-vm", "203.0.113.25")
    assert same_audit(etcd.json("audit", "--limit", "500")) == same_audit(sqlite.json("audit", "--limit", "500"))
    assert same_audit(etcd.json("audit", "--limit", "3")) == same_audit(sqlite.json("audit", "--limit", "3"))
    status = [{k: v for k, v in cli.json("status").items() if k not in ("state", "generation", "daemon", "gateways")}
              for cli in (sqlite, etcd)]
    assert status[0] == status[1]
    # the same one-line errors, exit 2, nothing changed
    generation = etcd.json("status")["generation"]
    for cli in (sqlite, etcd):
        err = cli("vm", "add", "dup", "--subscription", "payg-shop", "--address", "198.18.2.77", expect=2)
        assert err.count("\n") == 1 and "198.18.2.77" in err
        assert "no resource 'nope'" in cli("vm", "restart", "nope", expect=2)
        assert "never exempted" in cli("exemption", "grant", "payg-shop", "--case", "1", expect=2)
    assert etcd.json("status")["generation"] == generation
    assert "ok (" in etcd("state", "check")


def test_state_copy_round_trip_keeps_every_listing(tmp_path, url, capsys):
    first = Cli(tmp_path / "first.db", capsys)
    first("apply", str(LAB))
    first("diagnose", "devtest-lab")
    out = first("state", "copy", str(first.state), url)
    assert out.startswith(f"copied {first.state} to {url} (13 subscriptions")
    back = Cli(tmp_path / "back.db", capsys)
    back("state", "copy", url, str(back.state))
    etcd = Cli(url, capsys)  # type: ignore[arg-type]
    for listing in LISTINGS:
        assert back.json(*listing) == first.json(*listing) == etcd.json(*listing), listing
    assert "ok (" in back("state", "check") and "ok (" in etcd("state", "check")
    assert judged_table(back.state) == judged_table(first.state) != []  # what the daemon compiles its table from
    # a non-empty target is refused, in one line, unless --replace
    err = first("state", "copy", str(back.state), url, expect=2)
    assert err.count("\n") == 1 and "--replace" in err and "already holds a state" in err
    back("vm", "remove", "trial-vm")
    back("state", "copy", "--replace", str(back.state), url)
    assert etcd.json("vm", "list") == back.json("vm", "list")
    assert "trial-vm" not in {r["name"] for r in etcd.json("vm", "list")}


def test_concurrent_writers_lose_nothing_and_keep_every_invariant(url, capsys):
    """4 processes at once, 30 rounds each (etcd_writer.py: ~120 changes a process) on one set of resources,
    addresses, one VNet and one subscription removed and added back: every change a writer was told succeeded is
    there and in the audit log once, no address has two owners, no resource is left in a removed subscription."""
    cli = Cli(url, capsys)  # type: ignore[arg-type]
    cli("subscription", "add", "shared", "--type", "payg")
    cli("subscription", "add", "doomed", "--type", "payg")
    cli("vnet", "add", "net", "--subscription", "shared", "--prefix", "198.18.128.0/17")
    writer = Path(__file__).with_name("etcd_writer.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(writer), url, str(i), "30"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(4)]
    outcomes = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outcomes]
    done = [json.loads(out) for out, _ in outcomes]
    vms = {r["name"]: r for r in cli.json("vm", "list")}
    added = sorted(name for d in done for name in d["added"])
    assert sorted(n for n in vms if n.startswith("w")) == added  # no add lost, none made twice
    assert sum(d["refused"] for d in done) > 0  # they did compete for the addresses
    assert sum(d["conflicts"] for d in done) > 0, done  # and their transactions met (each was run again)
    owners: dict[str, str] = {}
    for r in vms.values():
        for a in r["addresses"]:
            assert a not in owners, f"{a} held by {owners[a]} and {r['name']}"
            owners[a] = r["name"]
    subnets = {s["name"] for s in cli.json("vnet", "list")[0]["subnets"]}
    assert subnets == {name for d in done for name in d["subnets"]} and len(subnets) == 120  # no update lost
    subscriptions = {s["name"] for s in cli.json("subscription", "list")}
    assert all(r["subscription"] in subscriptions for r in vms.values())
    audit = cli.json("audit", "--limit", "100000")
    assert sorted(r["name"] for r in audit if r["kind"] == "resource" and r["before"] is None
                  and r["name"].startswith("w")) == added
    assert sum(1 for r in audit if r["kind"] == "vnet") == 121  # made once, then one row a subnet
    assert "ok (" in cli("state", "check")


def test_a_member_nobody_answers_on_is_one_line(capsys):
    cli = Cli(f"etcd://127.0.0.1:{free_port()}/x", capsys)  # type: ignore[arg-type]
    err = cli("vm", "list", expect=1)
    assert err.count("\n") == 1 and "no etcd member answered" in err


@pytest.mark.parametrize("location, says", [
    ("etcd://127.0.0.1:2379", "name the prefix"), ("etcd://127.0.0.1:99999/x", "port"),
    ("etcd:///x", "no member"), ("etcd://::1/x", "brackets"), ("etcd://h:1/a//b", "prefix may hold"),
])
def test_a_bad_etcd_location_is_one_line(capsys, location, says):
    err = Cli(location, capsys)("vm", "list", expect=2)  # type: ignore[arg-type]
    assert err.count("\n") == 1 and says in err


def test_plain_and_tls_mismatched_and_the_daemon_are_one_line(etcd, secure, capsys):
    to_tls, to_plain = Cli(secure.url("fleet"), capsys), Cli(etcd.url("x"), capsys)  # type: ignore[arg-type]
    plain_to_tls = to_tls("vm", "list", expect=2)
    assert plain_to_tls.count("\n") == 1 and "give --etcd-cacert" in plain_to_tls
    tls_to_plain = to_plain("--etcd-cacert", str(secure.pki.ca), "vm", "list", expect=2)
    assert tls_to_plain.count("\n") == 1 and "does not speak TLS" in tls_to_plain
    daemon = to_plain("run", expect=2)  # the daemon follows an etcd state now: an empty prefix is one line
    assert daemon.count("\n") == 1 and "no state at" in daemon


def test_the_state_follows_the_first_member_that_answers(etcd, capsys):
    url = f"etcd://127.0.0.1:{free_port()},{etcd.endpoint}/t/{uuid.uuid4().hex[:12]}"
    cli = Cli(url, capsys)  # type: ignore[arg-type]
    cli("subscription", "add", "one", "--type", "payg")
    assert [s["name"] for s in cli.json("subscription", "list")] == ["one"]


# ------------------------------------------------------------ TLS and authentication

@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory):
    with running_etcd(tmp_path_factory.mktemp("etcd-tls"), tls=True) as member:
        member.enable_auth("root-secret")
        member.ctl("user", "add", "operator:op-secret")
        member.ctl("user", "add", "gateway:gw-secret")
        member.ctl("role", "add", "enforcer-rw")
        member.ctl("role", "add", "enforcer-ro")
        member.ctl("role", "grant-permission", "--prefix=true", "enforcer-rw", "readwrite", "/fleet/")
        member.ctl("role", "grant-permission", "--prefix=true", "enforcer-ro", "read", "/fleet/")
        member.ctl("user", "grant-role", "operator", "enforcer-rw")
        member.ctl("user", "grant-role", "gateway", "enforcer-ro")
        yield member


def tls_cli(member: Etcd, capsys, monkeypatch, user: str | None, password: str | None, ca: Path | None = None,
            client_cert: bool = True):
    pki = member.pki
    assert pki is not None
    args = ["--etcd-cacert", str(ca or pki.ca)]
    if client_cert:
        args += ["--etcd-cert", str(pki.dir / "client.pem"), "--etcd-key", str(pki.dir / "client.key")]
    if user:
        args += ["--etcd-user", user]
    if password is None:
        monkeypatch.delenv("ENFORCER_ETCD_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("ENFORCER_ETCD_PASSWORD", password)

    class Secure(Cli):
        def __call__(self, *a: str, expect: int = 0) -> str:
            return super().__call__(*args, "--state", member.url("fleet"), *a, expect=expect)
    return Secure(Path("unused"), capsys)


def test_tls_and_roles(secure, capsys, monkeypatch):
    operator = tls_cli(secure, capsys, monkeypatch, "operator", "op-secret")
    operator("subscription", "add", "ea", "--type", "ea")
    gateway = tls_cli(secure, capsys, monkeypatch, "gateway", "gw-secret")
    assert [s["name"] for s in gateway.json("subscription", "list")] == ["ea"]
    err = gateway("subscription", "add", "other", "--type", "payg", expect=2)
    assert err.count("\n") == 1 and "permission denied" in err
    operator = tls_cli(secure, capsys, monkeypatch, "operator", "op-secret")
    assert [s["name"] for s in operator.json("subscription", "list")] == ["ea"]


@pytest.mark.parametrize("case, says", [
    ("wrong password", "authentication failed"),
    ("no password", "ENFORCER_ETCD_PASSWORD"),
    ("no user", "give --etcd-user"),  # the client certificate's CN is then the user: one with no role
    ("wrong CA", "not signed by a CA"),
    ("no client certificate", "client certificate"),
])
def test_tls_and_auth_mistakes_are_one_line_and_exit_2(secure, capsys, monkeypatch, case, says):
    pki = secure.pki
    cli = {"wrong password": lambda: tls_cli(secure, capsys, monkeypatch, "operator", "nope"),
           "no password": lambda: tls_cli(secure, capsys, monkeypatch, "operator", None),
           "no user": lambda: tls_cli(secure, capsys, monkeypatch, None, None),
           "wrong CA": lambda: tls_cli(secure, capsys, monkeypatch, "operator", "op-secret", ca=pki.other_ca),
           "no client certificate": lambda: tls_cli(secure, capsys, monkeypatch, "operator", "op-secret",
                                                    client_cert=False)}[case]()
    err = cli("subscription", "list", expect=2)
    assert err.count("\n") == 1 and says in err, err


def test_shell_completion_reads_names_from_etcd(tmp_path, url, capsys):
    from click.shell_completion import BashComplete

    from enforcer.cli.main import cli as command
    sqlite = Cli(tmp_path / "state.db", capsys)
    sqlite("apply", str(LAB))
    sqlite("state", "copy", str(sqlite.state), url)

    def complete(state: str, *words: str) -> list[str]:
        shell = BashComplete(command, {}, "enforcer", "_ENFORCER_COMPLETE")
        return [c.value for c in shell.get_completions(["--state", state, *words[:-1]], words[-1])]
    for words in (("vm", "show", "shop-"), ("diagnose", "devtest"), ("vnet", "subnet-add", ""), ("vm", "show", "zz")):
        assert complete(url, *words) == complete(str(sqlite.state), *words), words
    assert complete(url, "vm", "show", "shop-") == ["shop-blob", "shop-mx", "shop-relay", "shop-web"]
