"""Input that cannot hurt: every malformed argument or file is one line on stderr, exit 2, and the state as it was.

The cases come from a run of malformed CLI calls and inventory files that once gave tracebacks, hung, blew up
memory or were silently accepted (issue 8). Each goes through the real CLI against a real state file holding the
example lab; the fuzz tests feed generated documents through the real parser and convergence.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.cli.main import main
from enforcer.core.converge import converge
from enforcer.core.inventory import Inventory
from enforcer.errors import UserError
from enforcer.state.documents import read_document
from enforcer.state.profiles import load_profile
from support.paths import LAB, ROOT

LAB_DOC = yaml.safe_load(LAB.read_text())
VM = ["vm", "add", "x1", "--subscription", "ea-prod", "--vnet", "hub", "--address"]


def bomb(use: str) -> str:
    """A "billion laughs" document: nine levels of aliases, each ten times the one before, kept under `lab` (which
    convergence does not read) and used once where the inventory expects a list of addresses or prefixes."""
    levels = ['a0: &a0 ["198.18.7.1"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "lab:\n" + "".join(f"  {line}\n" for line in levels) + use.replace("BOMB", "*a9") + "\n"


def lab_with(**changes: Any) -> str:
    """The example lab with some sections replaced, as YAML (copied: a shared value would be dumped as an alias)."""
    return yaml.safe_dump(json.loads(json.dumps({**LAB_DOC, **changes})), sort_keys=False)


EA_TWICE = [*LAB_DOC["resources"], {**LAB_DOC["resources"][0], "subscription": "payg-shop"}]
HUB = {"name": "x", "subscription": "ea-prod", "prefixes": ["198.18.9.0/24"]}
RES = {"name": "x1", "subscription": "ea-prod", "kind": "vm"}
NOT_UTF8_TOML = "[profile]\nid = \"azure\"\nname = \"Caf\xe9\"\n".encode("latin-1")

# (id, files to write: name -> text or bytes, argv with {d} for the directory, phrase on stderr, environment)
Case = tuple[str, dict[str, str | bytes], list[str], str, dict[str, str]]
CASES: list[Case] = [
    # encodings
    ("yaml-latin1", {"f.yml": "subscriptions: [{name: caf\xe9, type: ea}]\n".encode("latin-1")},
     ["apply", "{d}/f.yml"], "not UTF-8", {}),
    ("yaml-utf16-bom", {"f.yml": LAB.read_text().encode("utf-16")}, ["apply", "{d}/f.yml"], "not UTF-8", {}),
    ("yaml-utf16-no-bom", {"f.yml": LAB.read_text().encode("utf-16-le")}, ["apply", "{d}/f.yml"], "not UTF-8", {}),
    ("yaml-control-char", {"f.yml": "subscriptions: [{name: a\x01, type: ea}]\n"}, ["apply", "{d}/f.yml"],
     "unacceptable character #x0001", {}),
    ("config-latin1", {"c.toml": "when_down = \"caf\xe9\"\n".encode("latin-1")},
     ["run", "--config", "{d}/c.toml"], "not UTF-8", {}),
    ("config-deep", {"c.toml": "queues = " + "[" * 5000 + "]" * 5000 + "\n"},
     ["run", "--config", "{d}/c.toml"], "nested too deeply", {}),
    ("profile-latin1", {"p/azure.toml": NOT_UTF8_TOML}, ["vm", "list"], "not UTF-8", {"ENFORCER_POLICIES": "{d}/p"}),
    ("profile-deep", {"p/azure.toml": "x = " + "[" * 5000 + "]" * 5000 + "\n"}, ["vm", "list"],
     "nested too deeply", {"ENFORCER_POLICIES": "{d}/p"}),
    # size, depth, aliases
    ("alias-bomb-internal", {"f.yml": bomb("internal_prefixes: BOMB")}, ["apply", "{d}/f.yml"],
     "anchors and aliases", {}),
    ("alias-bomb-addresses", {"f.yml": bomb("resources: [{name: b, subscription: ea-prod, kind: vm, "
                                            "addresses: BOMB}]")}, ["apply", "{d}/f.yml"], "anchors and aliases", {}),
    ("alias-bomb-prefixes", {"f.yml": bomb("vnets: [{name: b, subscription: ea-prod, prefixes: BOMB}]")},
     ["apply", "{d}/f.yml"], "anchors and aliases", {}),
    ("deep-list", {"f.yml": "internal_prefixes: " + "[" * 10000 + "]" * 10000 + "\n"}, ["apply", "{d}/f.yml"],
     "nested more than 32 levels", {}),
    ("deep-block", {"f.yml": "internal_prefixes:\n" + "".join("  " * i + "- \n" for i in range(1, 200))},
     ["apply", "{d}/f.yml"], "nested more than 32 levels", {}),
    ("too-large", {"f.yml": b""}, ["apply", "{d}/big.yml"], "larger than 16 MiB", {}),
    ("directory", {"f.yml": b""}, ["apply", "{d}"], "directory", {}),
    ("duplicate-key", {"f.yml": "subscriptions: [{name: a, type: ea, type: payg}]\n"}, ["apply", "{d}/f.yml"],
     "'type' appears twice", {}),
    ("bad-timestamp", {"f.yml": "lab: {built: 2001-13-01}\n"}, ["apply", "{d}/f.yml"], "a value cannot be read", {}),
    ("huge-integer", {"f.yml": "lab: {n: " + "9" * 5000 + "}\n"}, ["apply", "{d}/f.yml"], "a value cannot be read",
     {}),
    ("explicit-tag", {"f.yml": "lab: {built: !!timestamp tomorrow}\n"}, ["apply", "{d}/f.yml"], "tags such as", {}),
    ("unhashable-key", {"f.yml": "? [a]\n: b\n"}, ["apply", "{d}/f.yml"], "not valid YAML", {}),
    ("two-documents", {"f.yml": "subscriptions: []\n---\nvnets: []\n"}, ["apply", "{d}/f.yml"], "not valid YAML",
     {}),
    # names
    ("type-with-newline", {"f.yml": yaml.safe_dump({"subscriptions": [{"name": "a", "type": "ea\nx"}]})},
     ["apply", "{d}/f.yml"], "holds a line break", {}),
    ("profile-not-a-name", {"f.yml": "profile: [azure]\n"}, ["apply", "{d}/f.yml"], "profile: expected a profile name",
     {}),
    ("subscription-name-null", {"f.yml": "subscriptions: [{name: null, type: ea}]\n"}, ["apply", "{d}/f.yml"],
     "name: expected a name, got None", {}),
    ("vnet-name-null-with-subnets", {"f.yml": yaml.safe_dump({"vnets": [{**HUB, "name": None, "subnets": [
        {"name": "a", "prefix": "198.18.9.0/25"}]}]})}, ["apply", "{d}/f.yml"], "name: expected a name, got None",
     {}),
    ("resource-name-null", {"f.yml": yaml.safe_dump({"resources": [{**RES, "name": None,
                                                                    "addresses": ["198.18.1.77"]}]})},
     ["apply", "{d}/f.yml"], "name: expected a name, got None", {}),
    ("subscription-type-null", {"f.yml": "subscriptions: [{name: a, type: null}]\n"}, ["apply", "{d}/f.yml"],
     "type: expected a name, got None", {}),
    ("name-trailing-newline-file", {"f.yml": yaml.safe_dump({"resources": [{**RES, "name": "x1\n",
                                                                            "addresses": ["198.18.1.77"]}]})},
     ["apply", "{d}/f.yml"], "invalid resource name 'x1\\n'", {}),
    ("name-trailing-newline-cli", {}, ["subscription", "add", "s1\n", "--type", "ea"],
     "invalid subscription name 's1\\n'", {}),
    ("mixed-key-types", {"f.yml": "subscriptions: [{1: a, b: c, name: s, type: ea}]\n"}, ["apply", "{d}/f.yml"],
     "unknown key '1'", {}),
    ("address-not-a-scalar", {"f.yml": yaml.safe_dump({"resources": [{**RES, "addresses": [["198.18.1.77"]]}]})},
     ["apply", "{d}/f.yml"], "addresses[0]: expected an address", {}),
    # duplicates
    ("duplicate-subscriptions", {"f.yml": lab_with(subscriptions=[*LAB_DOC["subscriptions"],
                                                                  {"name": "ea-prod", "type": "payg"}])},
     ["apply", "{d}/f.yml"], "subscriptions[0] and subscriptions[13] are both named 'ea-prod'", {}),
    ("duplicate-vnets", {"f.yml": lab_with(vnets=[*LAB_DOC["vnets"], LAB_DOC["vnets"][0]])},
     ["apply", "{d}/f.yml"], "vnets[0] and vnets[5] are both named 'hub'", {}),
    ("duplicate-subnets", {"f.yml": lab_with(vnets=[{**LAB_DOC["vnets"][2], "subnets": [
        *LAB_DOC["vnets"][2]["subnets"], {"name": "default", "prefix": "198.18.3.192/26"}]}])},
     ["apply", "{d}/f.yml"], "subnets[0] and subnets[2] are both named 'default'", {}),
    ("duplicate-resources", {"f.yml": lab_with(resources=EA_TWICE)}, ["apply", "{d}/f.yml"],
     "resources[0] and resources[19] are both named 'ea-vm'", {}),
    ("duplicate-address", {"f.yml": yaml.safe_dump({"resources": [{**RES, "addresses": ["2001:db8:1::77",
                                                                                         "2001:DB8:1:0::77"]}]})},
     ["apply", "{d}/f.yml"], "2001:db8:1::77 is listed twice", {}),
    # check --to
    ("to-unclosed-bracket", {}, ["check", "--from", "ea-vm", "--to", "[::1"], "unclosed '['", {}),
    ("to-ipv4-in-brackets", {}, ["check", "--from", "ea-vm", "--to", "[198.51.100.1]:25"], "brackets are for IPv6",
     {}),
    ("to-ambiguous", {}, ["check", "--from", "ea-vm", "--to", "::1:25"], "ambiguous", {}),
    ("to-ambiguous-long", {}, ["check", "--from", "ea-vm", "--to", "2001:db8::1:587"], "ambiguous", {}),
    ("to-empty-port", {}, ["check", "--from", "ea-vm", "--to", "198.51.100.1:"], "the port is empty", {}),
    ("to-empty-port-v6", {}, ["check", "--from", "ea-vm", "--to", "[2001:db8::1]:"], "the port is empty", {}),
    ("to-port-plus", {}, ["check", "--from", "ea-vm", "--to", "198.51.100.1:+25"], "from 1 to 65535", {}),
    ("to-port-minus", {}, ["check", "--from", "ea-vm", "--to", "[2001:db8::1]:-25"], "from 1 to 65535", {}),
    ("to-port-space", {}, ["check", "--from", "ea-vm", "--to", "198.51.100.1: 25"], "from 1 to 65535", {}),
    ("to-port-unicode-digits", {}, ["check", "--from", "ea-vm", "--to", "198.51.100.1:\u00b25"], "from 1 to 65535",
     {}),
    ("to-junk-after-bracket", {}, ["check", "--from", "ea-vm", "--to", "[2001:db8::1]x"], "after ']'", {}),
    ("to-zone", {}, ["check", "--from", "ea-vm", "--to", "[fe80::1%eth0]:25"], "zone", {}),
    # addresses from the CLI
    ("cli-zone", {}, [*VM, "2001:db8:1::99%1"], "zone", {}),
    ("cli-link-local-v4", {}, [*VM, "169.254.10.1"], "link-local", {}),
    ("cli-link-local-v6", {}, [*VM, "fe80::99"], "link-local", {}),
    ("cli-multicast-v4", {}, [*VM, "224.0.0.251"], "multicast", {}),
    ("cli-multicast-v6", {}, [*VM, "ff02::1"], "multicast", {}),
    ("cli-loopback-v4", {}, [*VM, "127.0.0.2"], "loopback", {}),
    ("cli-loopback-v6", {}, [*VM, "::1"], "loopback", {}),
    ("cli-unspecified-v4", {}, [*VM, "0.0.0.0"], "unspecified", {}),
    ("cli-unspecified-v6", {}, [*VM, "::"], "unspecified", {}),
    ("cli-this-network", {}, [*VM, "0.1.2.3"], "this network", {}),
    ("cli-broadcast", {}, [*VM, "255.255.255.255"], "broadcast", {}),
    ("cli-class-e", {}, [*VM, "240.0.0.7"], "reserved", {}),
    ("cli-mapped", {}, [*VM, "::ffff:198.18.1.50"], "the kernel sees such traffic as IPv4", {}),
    ("cli-multicast-prefix", {}, [*VM, "224.0.0.0/28"], "multicast", {}),
    ("cli-vnet-zone", {}, ["vnet", "add", "x", "--subscription", "ea-prod", "--prefix", "fe80::%eth0/64"], "zone",
     {}),
    ("cli-vnet-everything", {}, ["vnet", "add", "x", "--subscription", "ea-prod", "--prefix", "0.0.0.0/0"],
     "overlaps", {}),
    ("cli-subnet-link-local", {}, ["vnet", "subnet-add", "hub", "x", "169.254.0.0/24"], "link-local", {}),
    # addresses from files
    ("file-vnet-zone", {"f.yml": yaml.safe_dump({"vnets": [{**HUB, "prefixes": ["fe80::%eth0/64"]}]})},
     ["apply", "{d}/f.yml"], "zone", {}),
    ("file-subnet-multicast", {"f.yml": yaml.safe_dump({"vnets": [{**HUB, "subnets": [
        {"name": "a", "prefix": "ff02::/16"}]}]})}, ["apply", "{d}/f.yml"], "multicast", {}),
    ("file-address-zone", {"f.yml": yaml.safe_dump({"resources": [{**RES, "addresses": ["2001:db8:1::99%1"]}]})},
     ["apply", "{d}/f.yml"], "zone", {}),
    ("file-address-mapped", {"f.yml": yaml.safe_dump({"resources": [{**RES, "addresses": ["::ffff:c612:132"]}]})},
     ["apply", "{d}/f.yml"], "IPv4-mapped", {}),
    ("file-internal-loopback", {"f.yml": "internal_prefixes: [127.0.0.0/8]\n"}, ["apply", "{d}/f.yml"],
     "loopback", {}),
    ("file-internal-everything", {"f.yml": "internal_prefixes: ['::/0']\n"}, ["apply", "{d}/f.yml"], "overlaps",
     {}),
]


def run(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(state: Path, capsys: Any) -> tuple[Any, ...]:
    """The state as bytes and as the CLI shows it."""
    shown = []
    for what in (["vm", "list"], ["subscription", "list"], ["vnet", "list"], ["status"], ["audit", "--limit", "5"]):
        code, out, err = run(["--state", str(state), *what, "--json"], capsys)
        assert code == 0, err
        doc = json.loads(out)
        if what == ["status"]:
            doc = {k: doc[k] for k in ("generation", "resources", "subscriptions") if k in doc}
        shown.append(doc)
    gc.collect()  # an in-process command's connection, closed when collected, checkpoints the -wal into the file
    return (state.read_bytes(), *map(json.dumps, shown))


@pytest.fixture
def state(tmp_path: Path, capsys: Any) -> Path:
    path = tmp_path / "state.db"
    code, _, err = run(["--state", str(path), "apply", str(LAB)], capsys)
    assert code == 0, err
    return path


def write_files(d: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        f = d / name
        f.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            f.write_text(content, encoding="utf-8")
        else:
            f.write_bytes(content)
    with open(d / "big.yml", "wb") as f:  # sparse: 17 MiB that cost nothing
        f.truncate(17 << 20)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_state_untouched(case: Case, state: Path, tmp_path: Path, capsys: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, files, argv, phrase, env = case
    d = tmp_path / "in"
    d.mkdir()
    write_files(d, files)
    before = snapshot(state, capsys)
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v.format(d=d))
        code, out, err = run(["--state", str(state), *(a.format(d=d) for a in argv)], capsys)
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert phrase in err, err
    assert snapshot(state, capsys) == before


def test_the_example_lab_still_applies(state: Path, capsys: Any) -> None:
    assert run(["--state", str(state), "apply", str(LAB)], capsys)[:2] == (0, "no changes\n")


def test_a_good_ipv6_destination_still_parses(state: Path, capsys: Any) -> None:
    for to, port in (("2001:db8:ffff::25", 25), ("[2001:db8:ffff::25]:587", 587), ("198.19.25.25:465", 465),
                     ("[2001:db8:ffff::25]", 25), ("2001:db8:1:2:3:4:5:25", 25)):
        code, out, err = run(["--state", str(state), "check", "--from", "ea-vm", "--to", to, "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["port"] == port


def cli_process(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "enforcer.cli", "--state", str(state), *args], env=env,
                          capture_output=True, text=True, timeout=10)


def fifo(d: Path) -> Path:
    os.mkfifo(d / "fifo.yml")  # nobody writes to it: a blocking open would wait for ever
    return d / "fifo.yml"


@pytest.mark.parametrize("make", [fifo, lambda d: Path("/dev/zero")], ids=["fifo", "dev-zero"])
def test_a_file_that_is_not_a_file_is_refused_without_blocking(make: Callable[[Path], Path], state: Path,
                                                                tmp_path: Path, capsys: Any) -> None:
    before = snapshot(state, capsys)
    done = cli_process(state, "apply", str(make(tmp_path)))  # a hang raises TimeoutExpired: the test fails
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "not a regular file" in done.stderr, done.stderr
    assert snapshot(state, capsys) == before


def test_a_config_that_is_a_fifo_is_refused_without_blocking(state: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "c.toml")
    done = cli_process(state, "run", "--config", str(tmp_path / "c.toml"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a regular file" in done.stderr, done.stderr


# ---------------------------------------------------------------- fuzzing the inventory parser

PROFILE = load_profile("azure")
LAB_INV = converge(Inventory(), PROFILE, LAB_DOC, str(LAB))[0]
KEYS = ["profile", "internal_prefixes", "subscriptions", "vnets", "resources", "lab", "name", "type", "exempt",
        "subscription", "prefixes", "subnets", "prefix", "delegated", "kind", "addresses", "vnet", "subnet", "mac",
        "egress", "state"]
NAMES = ["ea-prod", "payg-shop", "devtest-lab", "new-sub", "hub", "devnet", "new-net", "default", "ase", "ea-vm",
         "fw1", "shop-relay", "new-vm", "ea-vm\n", "", "a\x00b", "caf\u00e9", "x" * 70, "-x"]
WORDS = ["ea", "payg", "devtest", "gold", "vm", "vmss", "azure-firewall", "paas", "running", "stopped", "deallocated",
         "azure", "52:54:00:12:34:56", "ea\n", "\u202e"]
ADDRESSES = ["198.18.1.10", "198.18.1.0/24", "198.18.9.0/24", "198.18.9.0/25", "198.18.9.7", "2001:db8:1::10",
             "2001:db8:9::/64", "2001:db8:9::7", "fe80::1%eth0", "::ffff:198.18.1.1", "224.0.0.1", "0.0.0.0/0",
             "198.18.9.1/24", "10.0.0.0/8", "not an address", 3232235777]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(),
                    st.sampled_from(NAMES + WORDS + ADDRESSES), st.text(max_size=12))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-3, 3), st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=20)


def mostly(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a plausible value, sometimes anything: deep enough into convergence to meet its checks."""
    return st.one_of(plausible, plausible, plausible, values)


names, words = mostly(st.sampled_from(NAMES)), mostly(st.sampled_from(WORDS))
addresses = mostly(st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3) | st.sampled_from(ADDRESSES))
subnets = st.fixed_dictionaries({"name": names, "prefix": mostly(st.sampled_from(ADDRESSES))},
                                optional={"delegated": mostly(st.booleans())})
structured = st.fixed_dictionaries({}, optional={
    "profile": mostly(st.sampled_from(["azure", "azure-2017", "gcp"])),
    "internal_prefixes": addresses,
    "subscriptions": mostly(st.lists(st.fixed_dictionaries({"name": names, "type": words},
                                                           optional={"exempt": mostly(st.booleans())}), max_size=4)),
    "vnets": mostly(st.lists(st.fixed_dictionaries({"name": names, "subscription": names, "prefixes": addresses},
                                                   optional={"subnets": mostly(st.lists(subnets, max_size=3))}),
                             max_size=3)),
    "resources": mostly(st.lists(st.fixed_dictionaries(
        {"name": names, "subscription": names, "kind": words, "addresses": addresses},
        optional={k: names for k in ("vnet", "subnet", "egress")} | {"mac": words, "state": words}), max_size=4)),
    "lab": values,
})
documents = st.one_of(structured, structured, st.dictionaries(keys, values, max_size=6), values)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents, base=st.sampled_from([Inventory(), LAB_INV]), prune=st.booleans(),
       unicode=st.booleans())
def test_fuzzed_documents_converge_or_give_a_user_error(doc: Any, base: Inventory, prune: bool, unicode: bool,
                                                       tmp_path: Path) -> None:
    f = tmp_path / "fuzz.yml"
    f.write_text(yaml.safe_dump(doc, allow_unicode=unicode, sort_keys=False), encoding="utf-8")
    for read in (lambda: read_document(str(f)), lambda: doc):
        try:
            converge(base, PROFILE, read(), str(f), prune=prune)
        except UserError as e:
            assert "\n" not in str(e), str(e)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzzed_bytes_read_or_give_a_user_error(data: bytes, tmp_path: Path) -> None:
    f = tmp_path / "fuzz.yml"
    f.write_bytes(data)
    try:
        converge(Inventory(), PROFILE, read_document(str(f)), str(f))
    except UserError as e:
        assert "\n" not in str(e), str(e)
