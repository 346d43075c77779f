"""Every rule of docs/azure-policy.md (numbered rules 1-9 and the "Lab decisions"), checked at the decide() level.

Inventories are built with the pure operations of enforcer/lifecycle.py only; the only I/O is loading the profiles.
Addresses: lab hosts in 198.18.0.0/15 and 2001:db8::/32; the internet is 198.19.25.25 and 2001:db8:ffff::25.
"""

from __future__ import annotations

import inspect

import pytest

from enforcer.core import lifecycle
from enforcer.errors import UserError
from enforcer.core.inventory import Inventory, State
from enforcer.core.policy import Code, Verdict, decide
from enforcer.state.profiles import load_profile

P = load_profile("azure")
P17 = load_profile("azure-2017")

INTERNET = {4: "198.19.25.25", 6: "2001:db8:ffff::25"}
FAMILIES = pytest.mark.parametrize("fam", [4, 6], ids=["ipv4", "ipv6"])

# What the spec's text says of each subscription type of the current page: (blocked by default, exemption, rule).
SPEC_TYPES = {
    "ea": (False, "not-needed", 3),           # rule 3
    "mca-e": (False, "not-needed", 3),        # rule 3
    "devtest": (True, "self-service", 4),     # rule 4
    # rule 8, by name: Pay-As-You-Go, Visual Studio/MSDN, Free Trial, Azure for Students, CSP, Sponsorship,
    # Azure Pass, MPN, MCA for individuals, and any type not named above.
    "payg": (True, "never", 8),
    "msdn": (True, "never", 8),
    "free-trial": (True, "never", 8),
    "students": (True, "never", 8),
    "csp": (True, "never", 8),
    "sponsorship": (True, "never", 8),
    "azure-pass": (True, "never", 8),
    "mpn": (True, "never", 8),
    "mca-individual": (True, "never", 8),
    "other": (True, "never", 8),
}
RULE_8_NAMES = ["pay-as-you-go", "visual-studio", "msdn", "free-trial", "azure-for-students", "csp", "sponsorship",
                "azure-pass", "mpn", "mca", "other"]
NEVER_KINDS = sorted(k for k, v in P.kinds.items() if not v.follows_subscription)
SUBSCRIPTION_KINDS = sorted(k for k, v in P.kinds.items() if v.follows_subscription)


# ---------------------------------------------------------------- building labs with ops


def vm_addrs(n: int, net: int = 1) -> list[str]:
    """A dual-stack host: 198.18.NET.N and 2001:db8:NET::N (hex)."""
    return [f"198.18.{net}.{n}", f"2001:db8:{net:x}::{n:x}"]


def addr(n: int, fam: int, net: int = 1) -> str:
    return vm_addrs(n, net)[0 if fam == 4 else 1]


def lab(sub_type: str, sub: str = "s1", profile=P, net: int = 1) -> Inventory:
    """One subscription of `sub_type` with one dual-stack VNet 'v<net>' (198.18.NET.0/24, 2001:db8:NET::/48)."""
    inv = Inventory(profile=profile.id)
    return add_sub(inv, sub, sub_type, profile=profile, net=net)


def add_sub(inv: Inventory, sub: str, sub_type: str, profile=P, net: int | None = None) -> Inventory:
    inv, _ = lifecycle.add_subscription(inv, profile, sub, sub_type)
    if net is not None:
        inv, _ = lifecycle.add_vnet(inv, profile, f"v{net}", sub, [f"198.18.{net}.0/24", f"2001:db8:{net:x}::/48"])
    return inv


def add(inv: Inventory, name: str, sub: str, n: int, kind: str = "vm", profile=P, net: int = 1, **kw) -> Inventory:
    inv, _ = lifecycle.add_resource(inv, profile, name, sub, kind, vm_addrs(n, net), **kw)
    return inv


def step(op, inv: Inventory, *args, profile=P, **kw) -> Inventory:
    inv, _ = op(inv, profile, *args, **kw)
    return inv


def diag(inv: Inventory, sub: str, profile=P, **kw):
    inv, d = lifecycle.diagnose(inv, profile, sub, **kw)
    return inv, d


def internet(inv: Inventory, source, fam: int, port: int = 25, profile=P) -> Verdict:
    return decide(inv, profile, source, INTERNET[fam], port)


def with_delegated(inv: Inventory, vnet: str = "v1", net: int = 1) -> Inventory:
    """A delegated subnet 'ase' (an App Service Environment, say) in the VNet."""
    return step(lifecycle.add_subnet, inv, vnet, "ase", f"198.18.{net}.128/26", True)


# ---------------------------------------------------------------- rule 1: scope of resources


@FAMILIES
@pytest.mark.parametrize("kind", NEVER_KINDS)
def test_rule_1_paas_kind_scope_never_is_blocked_even_in_ea(kind, fam):
    """Rule 1: every other PaaS resource cannot send on port 25 at all, even in an EA subscription (rule 3)."""
    inv = add(lab("ea"), "p1", "s1", 10, kind=kind)
    v = internet(inv, addr(10, fam), fam)
    assert not v.allow
    assert v.code == Code.KIND_NEVER
    assert v.resource == "p1"
    assert "can never send on restricted ports" in v.reason
    assert "587" in v.reason  # the relay advice
    # ... and no exemption or restart changes that.
    inv = step(lifecycle.restart, inv, "p1")
    assert internet(inv, addr(10, fam), fam).code == Code.KIND_NEVER


def test_rule_1_app_service_and_functions_without_vnet_integration_are_never_kinds():
    """Rule 1: App Service and Azure Functions send on 25 only through VNet integration or ASE v3."""
    assert {"app-service", "functions", "paas"} <= set(NEVER_KINDS)
    assert {"vm", "vmss", "app-service-vnet", "functions-vnet", "ase-v3", "azure-firewall"} <= set(SUBSCRIPTION_KINDS)
    inv = lab("ea")
    inv = add(inv, "app", "s1", 10, kind="app-service")
    inv = add(inv, "appv", "s1", 11, kind="app-service-vnet")
    inv = add(inv, "fn", "s1", 12, kind="functions")
    inv = add(inv, "fnv", "s1", 13, kind="functions-vnet")
    inv = add(inv, "ase", "s1", 14, kind="ase-v3")
    for name, allowed in [("app", False), ("appv", True), ("fn", False), ("fnv", True), ("ase", True)]:
        v = internet(inv, inv.resources[name], 4)
        assert v.allow is allowed, (name, v)
        assert v.code == (Code.TYPE_NOT_BLOCKED if allowed else Code.KIND_NEVER)


@FAMILIES
@pytest.mark.parametrize("kind", SUBSCRIPTION_KINDS)
def test_rule_1_subscription_kinds_follow_the_same_subscription_rules(kind, fam):
    """Rule 1: VMs, scale set instances, VNet-integrated App Service/Functions, ASE v3 and Azure Firewall all
    follow the same subscription rules: allowed in EA, blocked in Pay-As-You-Go, exemptible in Dev/Test."""
    for sub_type, allow, code in [("ea", True, Code.TYPE_NOT_BLOCKED), ("payg", False, Code.BLOCKED_NEVER_EXEMPTIBLE),
                                  ("devtest", False, Code.BLOCKED_EXEMPTIBLE)]:
        inv = add(lab(sub_type), "r1", "s1", 10, kind=kind)
        v = internet(inv, addr(10, fam), fam)
        assert (v.allow, v.code) == (allow, code), (sub_type, v)
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.restart, inv, "r1")
    v = internet(inv, addr(10, fam), fam)
    assert (v.allow, v.code) == (True, Code.EXEMPT)


@FAMILIES
def test_rule_1_scale_set_instances_by_prefix_follow_the_subscription(fam):
    """Rule 1: a scale set registered by prefix: every instance address in it is judged by its subscription."""
    inv = lab("payg")
    inv = add_sub(inv, "ent", "ea")
    inv, _ = lifecycle.add_resource(inv, P, "ss-payg", "s1", "vmss", ["198.18.1.64/28", "2001:db8:1::100/120"])
    inv, _ = lifecycle.add_resource(inv, P, "ss-ea", "ent", "vmss", ["198.18.1.96/28", "2001:db8:1::200/120"])
    src_payg = {4: "198.18.1.70", 6: "2001:db8:1::17a"}[fam]
    src_ea = {4: "198.18.1.100", 6: "2001:db8:1::2ff"}[fam]
    v = internet(inv, src_payg, fam)
    assert (v.allow, v.code, v.resource) == (False, Code.BLOCKED_NEVER_EXEMPTIBLE, "ss-payg")
    v = internet(inv, src_ea, fam)
    assert (v.allow, v.code, v.resource) == (True, Code.TYPE_NOT_BLOCKED, "ss-ea")


# ---------------------------------------------------------------- rule 2: ports


@pytest.mark.parametrize("sub_type", sorted(P.types))
@FAMILIES
def test_rule_2_port_587_never_restricted_for_any_subscription_type(sub_type, fam):
    """Rule 2: port 587 is never restricted, whatever the subscription type."""
    inv = add(lab(sub_type), "vm1", "s1", 10)
    v = internet(inv, addr(10, fam), fam, port=587)
    assert v.allow
    assert v.code == Code.PORT_NEVER_RESTRICTED
    assert "587" in v.reason


@FAMILIES
def test_rule_2_port_587_allowed_from_paas_and_unknown_sources(fam):
    """Rule 2: 587 is never restricted, also for never-kinds and unregistered sources."""
    inv = add(lab("payg"), "p1", "s1", 10, kind="paas")
    assert internet(inv, addr(10, fam), fam, port=587).code == Code.PORT_NEVER_RESTRICTED
    v = internet(inv, addr(99, fam, net=9), fam, port=587)
    assert v.allow and v.code == Code.PORT_NEVER_RESTRICTED


@pytest.mark.parametrize("port", [465, 24, 26, 2525, 80, 443])
@FAMILIES
def test_rule_2_465_and_other_ports_not_restricted(port, fam):
    """Rule 2: no other port than 25 is blocked; 465 (SMTPS) in particular is not restricted."""
    inv = add(lab("payg"), "vm1", "s1", 10)
    v = internet(inv, addr(10, fam), fam, port=port)
    assert v.allow
    assert v.code == Code.PORT_NOT_RESTRICTED
    assert str(port) in v.reason
    assert P.restricted_ports == {25}
    # The same source is blocked on 25, so the port is what allowed it.
    assert not internet(inv, addr(10, fam), fam, port=25).allow


# ---------------------------------------------------------------- rule 3: EA and MCA-E


@FAMILIES
@pytest.mark.parametrize("sub_type", ["ea", "enterprise-agreement", "mca-e", "mcae"])
@pytest.mark.parametrize("kind", ["vm", "azure-firewall"])
def test_rule_3_ea_and_mca_e_not_blocked_for_vms_and_firewall(sub_type, kind, fam):
    """Rule 3: EA and MCA-E: outbound TCP 25 from VMs and Azure Firewall is not blocked."""
    inv = add(lab(sub_type), "r1", "s1", 10, kind=kind)
    v = internet(inv, addr(10, fam), fam)
    assert v.allow
    assert v.code == Code.TYPE_NOT_BLOCKED
    assert "not blocked" in v.reason
    assert v.subscription == "s1"
    _, d = diag(inv, "s1")
    assert d.outcome == "not-needed"


# ---------------------------------------------------------------- rule 4: Enterprise Dev/Test


@FAMILIES
def test_rule_4_devtest_blocked_by_default_and_diagnostic_lifts_it(fam):
    """Rule 4: Enterprise Dev/Test is blocked by default; the diagnostic exempts it automatically."""
    inv = add(lab("devtest"), "vm1", "s1", 10)
    v = internet(inv, addr(10, fam), fam)
    assert not v.allow
    assert v.code == Code.BLOCKED_EXEMPTIBLE
    assert "enforcer diagnose s1" in v.reason
    inv, d = diag(inv, "s1")
    assert d.outcome == "granted" and d.eligible
    assert inv.subscriptions["s1"].exempt
    assert inv.subscriptions["s1"].exempt_via == "diagnostic"
    # a VM created after the diagnostic is exempt at once
    inv = add(inv, "vm2", "s1", 11)
    v = internet(inv, addr(11, fam), fam)
    assert (v.allow, v.code) == (True, Code.EXEMPT)
    assert "exempt" in v.reason
    # the diagnostic run again changes nothing
    inv, d = diag(inv, "s1")
    assert d.outcome == "already-exempt"


def test_rule_4_devtest_is_not_exempted_through_a_support_case():
    """Rule 4: Dev/Test is exempted by the diagnostic, not by hand."""
    inv = add(lab("devtest"), "vm1", "s1", 10)
    with pytest.raises(UserError, match="enforcer diagnose s1"):
        lifecycle.grant_exemption(inv, P, "s1", "CASE-1")
    assert internet(inv, addr(10, 4), 4).code == Code.BLOCKED_EXEMPTIBLE


# ---------------------------------------------------------------- rule 5: restart after an exemption


@FAMILIES
def test_rule_5_running_vm_keeps_block_until_restart(fam):
    """Rule 5: after an exemption, a running VM keeps the block until stopped, deallocated and started again."""
    inv = add(lab("devtest"), "vm1", "s1", 10)
    inv, d = diag(inv, "s1")
    assert any("enforcer vm restart" in line and "vm1" in line for line in d.lines)
    v = internet(inv, addr(10, fam), fam)
    assert not v.allow
    assert v.code == Code.BLOCKED_EXEMPTIBLE
    assert "was exempted" in v.reason
    assert "enforcer vm restart vm1" in v.reason
    inv = step(lifecycle.restart, inv, "vm1")
    v = internet(inv, addr(10, fam), fam)
    assert (v.allow, v.code) == (True, Code.EXEMPT)


@FAMILIES
def test_rule_5_stop_deallocate_start_by_hand_gets_new_policy(fam):
    """Rule 5: the three steps, one at a time, give the VM the new network policy."""
    inv = add(lab("devtest"), "vm1", "s1", 10)
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.stop, inv, "vm1")
    assert inv.resources["vm1"].state == State.STOPPED
    assert internet(inv, addr(10, fam), fam).code == Code.NOT_RUNNING
    inv = step(lifecycle.deallocate, inv, "vm1")
    assert inv.resources["vm1"].state == State.DEALLOCATED
    v = internet(inv, addr(10, fam), fam)
    assert (v.allow, v.code) == (False, Code.NOT_RUNNING)
    assert "enforcer vm start vm1" in v.reason
    inv = step(lifecycle.start, inv, "vm1")
    assert inv.resources["vm1"].state == State.RUNNING
    assert internet(inv, addr(10, fam), fam).code == Code.EXEMPT


@FAMILIES
def test_rule_5_every_vm_of_subscription_exempt_after_restart_or_created_later(fam):
    """Rule 5: from then on every VM of the subscription, existing after its restart or created later, is exempt;
    a VM that was deallocated during the exemption pulls it when started."""
    inv = lab("devtest")
    inv = add(inv, "old", "s1", 10)
    inv = add(inv, "off", "s1", 11)
    inv = step(lifecycle.deallocate, inv, "off")
    inv, _ = diag(inv, "s1")
    inv = add(inv, "new", "s1", 12)
    inv, _ = lifecycle.add_resource(inv, P, "later", "s1", "vm", vm_addrs(13), state=State.DEALLOCATED)
    assert internet(inv, addr(10, fam), fam).code == Code.BLOCKED_EXEMPTIBLE      # not yet restarted
    assert internet(inv, addr(12, fam), fam).code == Code.EXEMPT                  # created later
    inv = step(lifecycle.start, inv, "off")
    inv = step(lifecycle.start, inv, "later")
    inv = step(lifecycle.restart, inv, "old")
    for n in (10, 11, 12, 13):
        v = internet(inv, addr(n, fam), fam)
        assert (v.allow, v.code) == (True, Code.EXEMPT), (n, v)


# ---------------------------------------------------------------- rule 6: delegated subnets


def delegated_lab(sub_type: str = "devtest") -> Inventory:
    inv = with_delegated(lab(sub_type))
    inv = step(lifecycle.add_subnet, inv, "v1", "default", "198.18.1.0/26", False)
    inv = add(inv, "ase1", "s1", 130, kind="ase-v3", vnet="v1", subnet="ase")
    inv = add(inv, "vm1", "s1", 10, vnet="v1", subnet="default")
    return inv


@FAMILIES
def test_rule_6_restart_alone_does_not_help_delegated_subnet(fam):
    """Rule 6: a resource in a delegated subnet does not pick up the exemption by a restart."""
    inv, _ = diag(delegated_lab(), "s1")
    inv = step(lifecycle.restart, inv, "ase1")
    v = internet(inv, addr(130, fam), fam)
    assert not v.allow
    assert v.code == Code.BLOCKED_EXEMPTIBLE
    assert "delegated subnet 'ase'" in v.reason
    assert "enforcer vnet refresh-delegated v1" in v.reason
    assert "enforcer vm restart" not in v.reason
    # stop + start does not help either
    inv = step(lifecycle.stop, inv, "ase1")
    inv = step(lifecycle.start, inv, "ase1")
    assert internet(inv, addr(130, fam), fam).code == Code.BLOCKED_EXEMPTIBLE


@FAMILIES
def test_rule_6_refresh_delegated_lifts_the_block(fam):
    """Rule 6: adding and removing a temporary subnet (refresh_delegated) gives the delegated subnet the exemption."""
    inv, d = diag(delegated_lab(), "s1")
    assert any("enforcer vnet refresh-delegated v1" in line for line in d.lines)
    inv = step(lifecycle.refresh_delegated, inv, "v1")
    v = internet(inv, addr(130, fam), fam)
    assert (v.allow, v.code) == (True, Code.EXEMPT)
    assert [s.name for s in inv.vnets["v1"].subnets] == ["ase", "default"]  # the temporary subnet is gone
    # the plain VM in a non-delegated subnet still follows rule 5: it needs its restart
    v = internet(inv, addr(10, fam), fam)
    assert v.code == Code.BLOCKED_EXEMPTIBLE
    assert "enforcer vm restart vm1" in v.reason


@FAMILIES
def test_rule_6_subnet_add_then_remove_by_hand_lifts_the_block(fam):
    """Rule 6: a new temporary subnet must be added and removed again; adding alone is not enough."""
    inv, _ = diag(delegated_lab(), "s1")
    inv = step(lifecycle.add_subnet, inv, "v1", "tmp", "198.18.1.64/28", False)
    assert internet(inv, addr(130, fam), fam).code == Code.BLOCKED_EXEMPTIBLE
    inv = step(lifecycle.remove_subnet, inv, "v1", "tmp")
    v = internet(inv, addr(130, fam), fam)
    assert (v.allow, v.code) == (True, Code.EXEMPT)


def test_rule_6_refresh_in_ipv6_only_vnet():
    """Rule 6 (and IPv6 like IPv4): the temporary subnet also works in an IPv6-only VNet."""
    inv = add_sub(Inventory(), "s1", "devtest")
    inv = step(lifecycle.add_vnet, inv, "v6", "s1", ["2001:db8:6::/48"])
    inv = step(lifecycle.add_subnet, inv, "v6", "ase", "2001:db8:6:1::/64", True)
    inv, _ = lifecycle.add_resource(inv, P, "ase6", "s1", "ase-v3", ["2001:db8:6:1::10"], vnet="v6", subnet="ase")
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.restart, inv, "ase6")
    assert decide(inv, P, "2001:db8:6:1::10", INTERNET[6], 25).code == Code.BLOCKED_EXEMPTIBLE
    inv = step(lifecycle.refresh_delegated, inv, "v6")
    v = decide(inv, P, "2001:db8:6:1::10", INTERNET[6], 25)
    assert (v.allow, v.code) == (True, Code.EXEMPT)


@FAMILIES
def test_rule_6_delegated_resource_deallocated_during_refresh_gets_exemption_when_started(fam):
    """Rule 6 + Lab decision "pulls its policy when it starts": after the add-and-remove cycle, a resource of the
    delegated subnet that was deallocated during it has the exemption once it starts (the cycle was done)."""
    inv = delegated_lab()
    inv = step(lifecycle.deallocate, inv, "ase1")
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.refresh_delegated, inv, "v1")
    inv = step(lifecycle.start, inv, "ase1")
    v = internet(inv, addr(130, fam), fam)
    assert (v.allow, v.code) == (True, Code.EXEMPT), v.reason


# ---------------------------------------------------------------- rule 7: only the subscription, only direct


@FAMILIES
def test_rule_7_exemption_covers_only_its_subscription(fam):
    """Rule 7: the exemption covers only the subscription it was requested for."""
    inv = lab("devtest", "s1")
    inv = add_sub(inv, "s2", "devtest")
    inv = add(inv, "a", "s1", 10)
    inv = add(inv, "b", "s2", 11)
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.restart, inv, "a")
    inv = step(lifecycle.restart, inv, "b")
    assert internet(inv, addr(10, fam), fam).code == Code.EXEMPT
    v = internet(inv, addr(11, fam), fam)
    assert (v.allow, v.code) == (False, Code.BLOCKED_EXEMPTIBLE)
    assert "s2" in v.reason


@FAMILIES
@pytest.mark.parametrize("appliance", ["azure-firewall", "nva"])
def test_rule_7_blocked_vm_through_ea_firewall_is_allowed(appliance, fam):
    """Rule 7: traffic leaving through an appliance is judged by the appliance's own subscription:
    a Pay-As-You-Go VM behind an EA firewall is allowed."""
    inv = lab("payg", "blocked")
    inv = add_sub(inv, "ent", "ea")
    inv = add(inv, "fw", "ent", 1, kind=appliance)
    inv = add(inv, "vm1", "blocked", 10, egress="fw")
    v = internet(inv, addr(10, fam), fam)
    assert v.allow
    assert v.code == Code.TYPE_NOT_BLOCKED
    assert v.resource == "vm1"
    assert v.subscription == "ent"
    assert "leaves through" in v.reason and "'fw'" in v.reason and "'ent'" in v.reason
    # the same VM sending directly would be blocked
    inv = step(lifecycle.update_resource, inv, "vm1", egress=None)
    assert internet(inv, addr(10, fam), fam).code == Code.BLOCKED_NEVER_EXEMPTIBLE


@FAMILIES
def test_rule_7_ea_vm_through_payg_firewall_is_blocked(fam):
    """Rule 7: an EA VM whose traffic leaves through a Pay-As-You-Go firewall is blocked."""
    inv = lab("ea", "ent")
    inv = add_sub(inv, "cheap", "payg")
    inv = add(inv, "fw", "cheap", 1, kind="azure-firewall")
    inv = add(inv, "vm1", "ent", 10, egress="fw")
    v = internet(inv, addr(10, fam), fam)
    assert not v.allow
    assert v.code == Code.BLOCKED_NEVER_EXEMPTIBLE
    assert v.subscription == "cheap"
    assert "leaves through" in v.reason and "'cheap'" in v.reason


@FAMILIES
def test_rule_7_exempt_vm_through_unexempted_firewall_is_blocked(fam):
    """Rule 7: the exemption covers only VM traffic routed directly to the internet."""
    inv = lab("devtest", "s1")
    inv = add_sub(inv, "hub", "devtest")
    inv = add(inv, "fw", "hub", 1, kind="azure-firewall")
    inv = add(inv, "direct", "s1", 10)
    inv = add(inv, "routed", "s1", 11, egress="fw")
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.restart, inv, "direct")
    inv = step(lifecycle.restart, inv, "routed")
    assert internet(inv, addr(10, fam), fam).code == Code.EXEMPT
    v = internet(inv, addr(11, fam), fam)
    assert (v.allow, v.code, v.subscription) == (False, Code.BLOCKED_EXEMPTIBLE, "hub")


@FAMILIES
def test_rule_7_firewall_of_exempted_subscription_needs_its_own_restart(fam):
    """Rule 7 + rule 5: behind a firewall, it is the firewall's pulled policy that counts, so the firewall
    (not the VM) must be restarted to pass the exemption on."""
    inv = lab("devtest")
    inv = add(inv, "fw", "s1", 1, kind="azure-firewall")
    inv = add(inv, "vm1", "s1", 10, egress="fw")
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.restart, inv, "vm1")
    v = internet(inv, addr(10, fam), fam)
    assert not v.allow
    assert "enforcer vm restart fw" in v.reason
    inv = step(lifecycle.restart, inv, "fw")
    v = internet(inv, addr(10, fam), fam)
    assert (v.allow, v.code, v.subscription) == (True, Code.EXEMPT, "s1")


def test_rule_7_stopped_firewall_carries_nothing():
    """Rule 7: a VM behind a firewall that is not running cannot reach the internet."""
    inv = lab("payg", "blocked")
    inv = add_sub(inv, "ent", "ea")
    inv = add(inv, "fw", "ent", 1, kind="azure-firewall")
    inv = add(inv, "vm1", "blocked", 10, egress="fw")
    inv = step(lifecycle.stop, inv, "fw")
    v = internet(inv, addr(10, 4), 4)
    assert (v.allow, v.code) == (False, Code.NOT_RUNNING)
    assert "enforcer vm start fw" in v.reason


# ---------------------------------------------------------------- rule 8: all other types


@FAMILIES
@pytest.mark.parametrize("type_word", RULE_8_NAMES)
def test_rule_8_other_types_blocked_and_never_exempted(type_word, fam):
    """Rule 8: Pay-As-You-Go, MSDN, Free Trial, ... and any other type: blocked, no exemption, advice 587."""
    inv = add(lab(type_word), "vm1", "s1", 10)
    v = internet(inv, addr(10, fam), fam)
    assert not v.allow
    assert v.code == Code.BLOCKED_NEVER_EXEMPTIBLE
    assert "never exempted" in v.reason
    assert "587" in v.reason
    inv2, d = diag(inv, "s1")
    assert d.outcome == "refused" and not d.eligible
    assert not inv2.subscriptions["s1"].exempt
    with pytest.raises(UserError, match="never exempted"):
        lifecycle.grant_exemption(inv, P, "s1", "CASE-1")
    inv2 = step(lifecycle.restart, inv2, "vm1")
    assert internet(inv2, addr(10, fam), fam).code == Code.BLOCKED_NEVER_EXEMPTIBLE


# ---------------------------------------------------------------- rule 9: changing the subscription type


@FAMILIES
@pytest.mark.parametrize("old, new", [("ea", "payg"), ("mca-e", "csp"), ("ea", "devtest")])
def test_rule_9_type_change_from_ea_blocks_only_after_restart(old, new, fam):
    """Rule 9 + Lab decision: a change from EA/MCA-E to another type brings the block into force on a running VM
    only at its next stop-deallocate-start; VMs created afterwards are blocked at once."""
    inv = add(lab(old), "vm1", "s1", 10)
    inv, lines = lifecycle.set_type(inv, P, "s1", new)
    assert any("enforcer vm restart" in line and "vm1" in line for line in lines)
    v = internet(inv, addr(10, fam), fam)
    assert v.allow
    assert v.code == Code.TYPE_NOT_BLOCKED
    assert "was of type" in v.reason and P.types[old].name in v.reason
    assert "enforcer vm restart vm1" in v.reason
    # stop + start (still allocated) keeps the old policy
    inv = step(lifecycle.stop, inv, "vm1")
    inv = step(lifecycle.start, inv, "vm1")
    assert internet(inv, addr(10, fam), fam).allow
    # a VM created after the change is blocked at once
    inv = add(inv, "vm2", "s1", 11)
    assert not internet(inv, addr(11, fam), fam).allow
    inv = step(lifecycle.restart, inv, "vm1")
    v = internet(inv, addr(10, fam), fam)
    assert not v.allow
    assert v.code == (Code.BLOCKED_EXEMPTIBLE if new == "devtest" else Code.BLOCKED_NEVER_EXEMPTIBLE)


@FAMILIES
def test_rule_9_type_change_reaches_delegated_subnet_only_by_refresh(fam):
    """Rule 9 + rule 6: a type change reaches a delegated-subnet resource only through the subnet step."""
    inv = delegated_lab("ea")
    inv = step(lifecycle.set_type, inv, "s1", "payg")
    inv = step(lifecycle.restart, inv, "ase1")
    v = internet(inv, addr(130, fam), fam)
    assert v.allow
    assert "enforcer vnet refresh-delegated v1" in v.reason
    inv = step(lifecycle.refresh_delegated, inv, "v1")
    assert internet(inv, addr(130, fam), fam).code == Code.BLOCKED_NEVER_EXEMPTIBLE


def test_rule_9_exempt_devtest_changed_to_payg_loses_its_exemption_after_restart():
    """Rule 9: an exempted Dev/Test subscription changed to Pay-As-You-Go loses the exemption (rule 8)."""
    inv = add(lab("devtest"), "vm1", "s1", 10)
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.restart, inv, "vm1")
    inv = step(lifecycle.set_type, inv, "s1", "payg")
    assert not inv.subscriptions["s1"].exempt
    assert internet(inv, addr(10, 4), 4).allow  # pulled before the change
    inv = step(lifecycle.restart, inv, "vm1")
    assert internet(inv, addr(10, 4), 4).code == Code.BLOCKED_NEVER_EXEMPTIBLE


def test_rule_9_change_to_ea_lifts_the_block_after_restart():
    """Rule 9, the other way round: a blocked subscription changed to EA is unblocked at the next restart."""
    inv = add(lab("payg"), "vm1", "s1", 10)
    inv = step(lifecycle.set_type, inv, "s1", "ea")
    v = internet(inv, addr(10, 6), 6)
    assert not v.allow and "enforcer vm restart vm1" in v.reason
    inv = step(lifecycle.restart, inv, "vm1")
    assert internet(inv, addr(10, 6), 6).code == Code.TYPE_NOT_BLOCKED


# ---------------------------------------------------------------- every type against the spec's text


@pytest.mark.parametrize("type_id", sorted(P.types))
def test_rules_3_4_8_every_type_blocked_by_default_as_the_spec_says(type_id):
    """Rules 3, 4 and 8: each subscription type of the azure profile is blocked by default (and exemptible) exactly
    as the spec's text says; a type the spec does not name falls under rule 8."""
    blocked, exemption, rule = SPEC_TYPES.get(type_id, (True, "never", 8))
    t = P.types[type_id]
    assert t.blocked_by_default is blocked
    assert t.exemption == exemption
    assert t.rule == rule
    inv = add(lab(type_id), "vm1", "s1", 10)
    for fam in (4, 6):
        v = internet(inv, addr(10, fam), fam)
        assert v.allow is (not blocked)
        assert v.code == (Code.TYPE_NOT_BLOCKED if not blocked else
                          Code.BLOCKED_EXEMPTIBLE if exemption == "self-service" else Code.BLOCKED_NEVER_EXEMPTIBLE)
    inv, d = diag(inv, "s1")
    assert d.outcome == {"not-needed": "not-needed", "self-service": "granted", "never": "refused"}[exemption]
    inv = step(lifecycle.restart, inv, "vm1")
    assert internet(inv, addr(10, 4), 4).allow is (exemption != "never")


def test_rules_3_4_8_every_type_the_spec_names_is_in_the_profile():
    """Rules 3, 4 and 8: every subscription type the spec names exists in the azure profile."""
    assert set(SPEC_TYPES) <= set(P.types)
    for word in RULE_8_NAMES:
        assert P.type_named(word).rule == 8, word


# ---------------------------------------------------------------- the historical profile


@FAMILIES
def test_azure_2017_payg_exemptible_through_support_case(fam):
    """Earlier versions: Pay-As-You-Go could ask for removal (a support case); restart still needed."""
    inv = add(lab("payg", profile=P17), "vm1", "s1", 10, profile=P17)
    v = internet(inv, addr(10, fam), fam, profile=P17)
    assert (v.allow, v.code) == (False, Code.BLOCKED_EXEMPTIBLE)
    assert "support case" in v.reason and "enforcer exemption grant s1 --case ID" in v.reason
    inv, d = diag(inv, "s1", profile=P17)
    assert d.outcome == "support-case" and d.blocked
    assert internet(inv, addr(10, fam), fam, profile=P17).code == Code.BLOCKED_EXEMPTIBLE
    inv = step(lifecycle.grant_exemption, inv, "s1", "CASE-42", profile=P17)
    assert inv.subscriptions["s1"].exempt_via == "case CASE-42"
    v = internet(inv, addr(10, fam), fam, profile=P17)
    assert not v.allow and "enforcer vm restart vm1" in v.reason
    inv = step(lifecycle.restart, inv, "vm1", profile=P17)
    v = internet(inv, addr(10, fam), fam, profile=P17)
    assert (v.allow, v.code) == (True, Code.EXEMPT)


@FAMILIES
@pytest.mark.parametrize("type_word", ["msdn", "azure-pass", "azure-in-open", "education", "students", "free-trial",
                                       "visual-studio"])
def test_azure_2017_msdn_and_friends_never_exempted(type_word, fam):
    """Earlier versions: MSDN, Azure Pass, Azure in Open, Education, Students, Free Trial, Visual Studio could
    never be unblocked."""
    inv = add(lab(type_word, profile=P17), "vm1", "s1", 10, profile=P17)
    v = internet(inv, addr(10, fam), fam, profile=P17)
    assert (v.allow, v.code) == (False, Code.BLOCKED_NEVER_EXEMPTIBLE)
    with pytest.raises(UserError, match="never exempted"):
        lifecycle.grant_exemption(inv, P17, "s1", "CASE-1")
    _, d = diag(inv, "s1", profile=P17)
    assert d.outcome == "refused"


def test_azure_2017_csp_uses_diagnostic_and_mpn_support_case():
    """Earlier versions: CSP used the same diagnostic; MPN, BizSpark Plus, Sponsorship went through a support case."""
    inv = lab("csp", profile=P17)
    _, d = diag(inv, "s1", profile=P17)
    assert d.outcome == "granted"
    for t in ("mpn", "bizspark-plus", "sponsorship"):
        inv = lab(t, profile=P17)
        _, d = diag(inv, "s1", profile=P17)
        assert d.outcome == "support-case", t
        assert P17.types[t].exemption == "support-case"


# ---------------------------------------------------------------- Lab decisions


@FAMILIES
def test_lab_policy_pulled_at_start_stopped_then_started_vm_keeps_its_policy(fam):
    """Lab decision: a VM pulls its network policy when it starts from deallocated; stop + start (still allocated)
    keeps the policy it pulled before."""
    inv = add(lab("devtest"), "vm1", "s1", 10)
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.stop, inv, "vm1")
    inv = step(lifecycle.start, inv, "vm1")
    v = internet(inv, addr(10, fam), fam)
    assert (v.allow, v.code) == (False, Code.BLOCKED_EXEMPTIBLE)
    assert "enforcer vm restart vm1" in v.reason


@FAMILIES
def test_lab_policy_pulled_at_start_deallocate_then_start_repulls(fam):
    """Lab decision: only deallocate + start re-pulls the policy (no explicit stop needed before deallocate)."""
    inv = add(lab("devtest"), "vm1", "s1", 10)
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.deallocate, inv, "vm1")
    inv = step(lifecycle.start, inv, "vm1")
    assert internet(inv, addr(10, fam), fam).code == Code.EXEMPT


@FAMILIES
def test_lab_apply_now_is_the_explicit_shortcut(fam):
    """Lab decision: a shortcut applies a change to running VMs at once, but only when asked (apply_now=True)."""
    # exemption
    inv = add(lab("devtest"), "vm1", "s1", 10)
    default, _ = diag(inv, "s1")
    assert internet(default, addr(10, fam), fam).code == Code.BLOCKED_EXEMPTIBLE
    now, d = diag(inv, "s1", apply_now=True)
    assert any("applied now" in line for line in d.lines)
    assert internet(now, addr(10, fam), fam).code == Code.EXEMPT
    # revocation
    revoked = step(lifecycle.revoke_exemption, now, "s1")
    assert internet(revoked, addr(10, fam), fam).code == Code.EXEMPT
    revoked = step(lifecycle.revoke_exemption, now, "s1", apply_now=True)
    assert internet(revoked, addr(10, fam), fam).code == Code.BLOCKED_EXEMPTIBLE
    # type change
    inv = add(lab("ea"), "vm1", "s1", 10)
    assert internet(step(lifecycle.set_type, inv, "s1", "payg"), addr(10, fam), fam).allow
    v = internet(step(lifecycle.set_type, inv, "s1", "payg", apply_now=True), addr(10, fam), fam)
    assert (v.allow, v.code) == (False, Code.BLOCKED_NEVER_EXEMPTIBLE)
    # support case (historical profile)
    inv = add(lab("payg", profile=P17), "vm1", "s1", 10, profile=P17)
    assert not internet(step(lifecycle.grant_exemption, inv, "s1", "C1", profile=P17), addr(10, fam), fam,
                        profile=P17).allow
    assert internet(step(lifecycle.grant_exemption, inv, "s1", "C1", profile=P17, apply_now=True),
                    addr(10, fam), fam, profile=P17).code == Code.EXEMPT


def test_lab_apply_now_is_never_the_default():
    """Lab decision: the shortcut is a flag that defaults to off in every operation that offers it."""
    for op in (lifecycle.diagnose, lifecycle.set_type, lifecycle.grant_exemption, lifecycle.revoke_exemption):
        assert inspect.signature(op).parameters["apply_now"].default is False, op.__name__


@FAMILIES
def test_lab_internal_destinations_in_vnets_never_blocked(fam):
    """Lab decision: destinations inside the lab's virtual networks are never blocked (VM-to-VM mail works),
    whoever sends: a Pay-As-You-Go VM, a PaaS resource, an unknown source, a VM behind a payg firewall."""
    inv = lab("payg")
    inv = add_sub(inv, "other", "free-trial", net=2)
    inv = add(inv, "vm1", "s1", 10)
    inv = add(inv, "vm2", "s1", 11)
    inv = add(inv, "p1", "s1", 12, kind="paas")
    dest_same_vnet = addr(11, fam)
    dest_other_vnet = addr(50, fam, net=2)
    for source in (addr(10, fam), inv.resources["vm1"], addr(12, fam), addr(99, fam, net=9)):
        for dest in (dest_same_vnet, dest_other_vnet):
            v = decide(inv, P, source, dest, 25)
            assert (v.allow, v.code) == (True, Code.INTERNAL_DESTINATION), (source, dest, v)
            assert "inside VNet" in v.reason
    assert not internet(inv, addr(10, fam), fam).allow


@FAMILIES
def test_lab_internal_prefixes_declared_by_operator_never_blocked(fam):
    """Lab decision: the private ranges the operator declares (inv.internal_prefixes) are never blocked."""
    inv = add(lab("payg"), "vm1", "s1", 10)
    inv = inv.with_(internal_prefixes=("198.18.200.0/24", "2001:db8:200::/48"))
    dest = {4: "198.18.200.25", 6: "2001:db8:200::25"}[fam]
    v = decide(inv, P, addr(10, fam), dest, 25)
    assert (v.allow, v.code) == (True, Code.INTERNAL_DESTINATION)
    assert "declared internal range" in v.reason
    # just outside the declared range is the internet again
    outside = {4: "198.18.201.25", 6: "2001:db8:201::25"}[fam]
    assert decide(inv, P, addr(10, fam), outside, 25).code == Code.BLOCKED_NEVER_EXEMPTIBLE


@pytest.mark.parametrize("sub_type", ["ea", "devtest", "payg"])
@pytest.mark.parametrize("state", ["running", "stopped", "deallocated", "exempt", "paas", "unknown"])
def test_lab_ipv6_treated_exactly_like_ipv4(sub_type, state):
    """Lab decision: IPv6 is treated exactly like IPv4: the same source in both families gets the same verdict."""
    inv = lab(sub_type)
    inv = add(inv, "r1", "s1", 10, kind="paas" if state == "paas" else "vm")
    if state in ("stopped", "deallocated"):
        inv = step(lifecycle.stop if state == "stopped" else lifecycle.deallocate, inv, "r1")
    if state == "exempt" and sub_type == "devtest":
        inv, _ = diag(inv, "s1")
        inv = step(lifecycle.restart, inv, "r1")
    n = 99 if state == "unknown" else 10
    v4 = internet(inv, addr(n, 4), 4)
    v6 = internet(inv, addr(n, 6), 6)
    assert (v4.allow, v4.code, v4.resource, v4.subscription) == (v6.allow, v6.code, v6.resource, v6.subscription)
    assert v4.reason == v6.reason or v4.code == Code.UNKNOWN_SOURCE
    # non-canonical IPv6 spellings are the same source and the same destination
    v6b = decide(inv, P, addr(n, 6).upper().replace("::", ":0::"), "2001:DB8:FFFF:0::25", 25)
    assert (v6b.allow, v6b.code) == (v6.allow, v6.code)


@FAMILIES
def test_lab_unknown_source_blocked_and_marked_unknown(fam):
    """Lab decision: a source address that belongs to no registered VM is blocked, and reported as unknown,
    even inside an EA VNet's address space."""
    inv = add(lab("ea"), "vm1", "s1", 10)
    for src in (addr(99, fam), addr(7, fam, net=9)):
        v = internet(inv, src, fam)
        assert not v.allow
        assert v.code == Code.UNKNOWN_SOURCE
        assert v.resource is None and v.subscription is None
        assert "no registered resource" in v.reason
        assert "enforcer vm add" in v.reason
    assert internet(inv, addr(10, fam), fam).allow  # the registered neighbour is allowed


@FAMILIES
def test_lab_revoked_exemption_follows_restart_rule(fam):
    """Lab decision: a revoked exemption follows the same restart rule as a granted one."""
    inv = add(lab("devtest"), "vm1", "s1", 10)
    inv, _ = diag(inv, "s1")
    inv = step(lifecycle.restart, inv, "vm1")
    assert internet(inv, addr(10, fam), fam).code == Code.EXEMPT
    inv, lines = lifecycle.revoke_exemption(inv, P, "s1")
    assert any("enforcer vm restart" in line for line in lines)
    v = internet(inv, addr(10, fam), fam)
    assert v.allow and v.code == Code.EXEMPT
    assert "was exempt" in v.reason and "enforcer vm restart vm1" in v.reason
    inv = step(lifecycle.stop, inv, "vm1")
    inv = step(lifecycle.start, inv, "vm1")
    assert internet(inv, addr(10, fam), fam).allow  # only stopped: keeps the exemption
    inv = add(inv, "vm2", "s1", 11)
    assert internet(inv, addr(11, fam), fam).code == Code.BLOCKED_EXEMPTIBLE  # created after the revocation
    inv = step(lifecycle.restart, inv, "vm1")
    v = internet(inv, addr(10, fam), fam)
    assert (v.allow, v.code) == (False, Code.BLOCKED_EXEMPTIBLE)


@FAMILIES
def test_lab_revoked_exemption_in_delegated_subnet_needs_refresh(fam):
    """Lab decision + rule 6: a revocation reaches a delegated-subnet resource only through the subnet step."""
    inv, _ = diag(delegated_lab(), "s1")
    inv = step(lifecycle.refresh_delegated, inv, "v1")
    inv = step(lifecycle.revoke_exemption, inv, "s1")
    inv = step(lifecycle.restart, inv, "ase1")
    v = internet(inv, addr(130, fam), fam)
    assert v.allow and "enforcer vnet refresh-delegated v1" in v.reason
    inv = step(lifecycle.refresh_delegated, inv, "v1")
    assert internet(inv, addr(130, fam), fam).code == Code.BLOCKED_EXEMPTIBLE
