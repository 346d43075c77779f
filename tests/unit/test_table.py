"""The verdict table (the daemon's Keeper over the C table) agrees with decide() for every source, and resolves
prefixes by longest match."""

import ipaddress

from hypothesis import HealthCheck, given, settings, strategies as st

from enforcer.core import lifecycle
from enforcer.core.inventory import Inventory, Pulled, Resource, State, Subscription
from enforcer.core.policy import decide
from enforcer.core.validate import validate
from enforcer.state.profiles import load_profile
from enforcer.core.verdicts import UNKNOWN, Judged, hw_mac, mac_text, pack
from enforcer.dataplane.keeper import Keeper

PROFILE = load_profile("azure")
INTERNET = "198.19.25.25"
TYPES = sorted(PROFILE.types)
KINDS = sorted(PROFILE.kinds)
APPLIANCE_KINDS = sorted(k for k, v in PROFILE.kinds.items() if v.appliance)

# A small address space, so that random sources often hit registered hosts and prefixes.
host4 = st.integers(0, 63).map(lambda i: f"198.18.0.{i}")
host6 = st.integers(0, 63).map(lambda i: str(ipaddress.ip_address(f"2001:db8::{i:x}")))  # canonical, as stored
prefix4 = st.sampled_from([24, 26, 28, 30]).flatmap(
    lambda plen: st.integers(0, 255 >> (plen - 24)).map(
        lambda i: str(ipaddress.ip_network(f"198.18.0.{(i << (32 - plen)) & 255}/{plen}"))))
prefix6 = st.sampled_from([120, 124]).flatmap(
    lambda plen: st.integers(0, 255 >> (plen - 120)).map(
        lambda i: str(ipaddress.ip_network(f"2001:db8::{(i << (128 - plen)) & 255:x}/{plen}"))))


@st.composite
def inventories(draw):
    subs = {}
    for i in range(draw(st.integers(1, 4))):
        t = draw(st.sampled_from(TYPES))
        exempt = PROFILE.types[t].exemptible and draw(st.booleans())
        subs[f"s{i}"] = Subscription(f"s{i}", t, exempt, "diagnostic" if exempt else None)
    resources = {}
    used = set()
    appliances = []
    for i in range(draw(st.integers(0, 12))):
        is_appliance = draw(st.booleans()) and i < 3
        kind = draw(st.sampled_from(APPLIANCE_KINDS if is_appliance else KINDS))
        addresses = draw(st.lists(st.one_of(host4, host6, prefix4, prefix6), min_size=1, max_size=3, unique=True))
        addresses = [a for a in addresses if a not in used] or [f"198.18.1.{i}"]
        used.update(addresses)
        state = draw(st.sampled_from([State.RUNNING, State.RUNNING, State.STOPPED, State.DEALLOCATED]))
        pulled = None
        if state != State.DEALLOCATED or draw(st.booleans()):
            t = draw(st.sampled_from(TYPES))
            pulled = Pulled(t, PROFILE.types[t].exemptible and draw(st.booleans()))
        egress = None
        if not PROFILE.kinds[kind].appliance and appliances and draw(st.booleans()):
            egress = draw(st.sampled_from(appliances))
        name = f"r{i}"
        resources[name] = Resource(name, draw(st.sampled_from(sorted(subs))), kind, tuple(addresses),
                                   egress=egress, state=state, pulled=pulled)
        if PROFILE.kinds[kind].appliance:
            appliances.append(name)
    inv = Inventory(subscriptions=subs, resources=resources)
    validate(inv, PROFILE)
    return inv


sources = st.one_of(host4, host6, st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))))


def table(inv):
    keeper = Keeper(PROFILE)
    keeper.fill(inv)
    view = keeper.view()
    return lambda source: keeper.verdict(view, pack(source))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inventories(), st.lists(sources, min_size=1, max_size=20))
def test_table_agrees_with_decide(inv, probes):
    lookup = table(inv)
    registered = [a.split("/")[0] for r in inv.resources.values() for a in r.addresses]
    for source in probes + registered:
        entry = lookup(source)
        verdict = decide(inv, PROFILE, source, INTERNET, 25)
        assert (entry.allow, entry.code, entry.subscription) == (verdict.allow, verdict.code, verdict.subscription), \
            source


def test_longest_prefix_wins_and_exact_beats_prefix():
    inv = Inventory(subscriptions={"ea": Subscription("ea", "ea"), "pg": Subscription("pg", "payg")})
    inv, _ = lifecycle.add_resource(inv, PROFILE, "wide", "ea", "vmss", ["198.18.0.0/24", "2001:db8::/64"])
    inv, _ = lifecycle.add_resource(inv, PROFILE, "narrow", "pg", "vmss", ["198.18.0.16/28", "2001:db8::10/124"])
    inv, _ = lifecycle.add_resource(inv, PROFILE, "host", "ea", "vm", ["198.18.0.17"])
    lookup = table(inv)
    assert (lookup("198.18.0.200").allow, lookup("198.18.0.200").subscription) == (True, "ea")    # wide
    assert (lookup("198.18.0.20").allow, lookup("198.18.0.20").subscription) == (False, "pg")     # narrow
    assert (lookup("198.18.0.17").allow, lookup("198.18.0.17").subscription) == (True, "ea")      # the host
    assert (lookup("2001:db8::1f").allow, lookup("2001:db8::1f").subscription) == (False, "pg")   # narrow
    assert (lookup("2001:db8::ff").allow, lookup("2001:db8::ff").subscription) == (True, "ea")    # wide
    assert lookup("198.18.1.1") is UNKNOWN
    assert lookup("2001:db8:1::1") is UNKNOWN


def test_table_keys_are_the_header_bytes():
    assert pack("198.18.0.1") == bytes([198, 18, 0, 1])
    assert pack("2001:db8::1") == bytes.fromhex("20010db8000000000000000000000001")


def test_the_judged_key_keeps_the_text_states_already_hold():
    """Address rows written by earlier versions hold this text: a key must encode to it and decode from it, or a
    compile would judge every address of an old state as a new group."""
    key = Judged("sub", "vm", State.STOPPED, "fw", Pulled("pay-as-you-go", False, created="2017-11-01"))
    text = ('["sub","vm","stopped","fw",'
            '"{\\"created\\":\\"2017-11-01\\",\\"exempt\\":false,\\"type\\":\\"pay-as-you-go\\"}"]')
    assert key.encode() == text and Judged.decode(text) == key
    bare = Judged("sub", "vm", State.RUNNING, None, None)
    assert bare.encode() == '["sub","vm","running",null,null]' and Judged.decode(bare.encode()) == bare


def test_a_mac_as_nfqueue_reports_it_and_back():
    assert hw_mac("02:00:00:00:00:0a") == b"\x02\0\0\0\0\x0a\0\0" and hw_mac(None) is None
    assert mac_text(hw_mac("02:00:00:00:00:0a")) == "02:00:00:00:00:0a" and mac_text(None) is None
