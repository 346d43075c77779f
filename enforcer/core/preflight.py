"""What a provider's rules say of a preflight's outcome (`enforcer probe --preflight TARGET --profile NAME`), and
the next step. Pure: the outcomes come from enforcer/lab/preflight.py, the rules from the profile.

A provider's block is a silent drop: only a time-out on a port the profile restricts can be it. A refusal is the
target's own answer, an unreachable is a route or an ICMP error; neither is the provider's block.
"""

from __future__ import annotations

from . import hints
from .profile import (EXEMPTION_WORDS, Exemption, Profile, SubscriptionType, exemption_conditions, exemption_paths,
                      type_says)

OUTCOME_WORDS = {"connected": "connected in", "refused": "refused in", "timeout": "timed out after",
                 "unreachable": "unreachable in", "error": "failed in"}


def outcome_line(result: dict[str, object]) -> str:
    """'IPv4 198.19.25.25 port 25: timed out after 5.0 s' (and the error's detail where there is one)."""
    words = OUTCOME_WORDS.get(str(result["outcome"]), str(result["outcome"]))
    detail = f" ({result['detail']})" if result.get("detail") else ""
    seconds = float(str(result["seconds"]))
    return f"{result['family']} {result['address']} port {result['port']}: {words} {seconds:.3f} s{detail}"


def who_is_blocked(profile: Profile) -> str:
    """Whose traffic on the restricted ports the profile blocks, in a phrase."""
    blocked = [t for t in profile.types.values() if t.blocked_by_default]
    if len(blocked) == len(profile.types) and not any(t.created_from or t.when_flagged for t in blocked):
        return f"blocked for every {profile.account_word}"
    clauses = {type_says(profile, t).split(";")[0] for t in profile.types.values()}
    if len(clauses) == 1:  # "blocked if created on or after ...", "blocked while flagged for spam"
        return clauses.pop()
    return f"blocked for {len(blocked)} of its {len(profile.types)} {profile.account_word} types; see: " \
        f"{hints.show_profile(profile.id)}"


def judge(profile: Profile, port: int, outcome: str, account: SubscriptionType | None = None) -> tuple[str, str]:
    """(what the profile's rules say of `outcome` on `port`, the next step); `account`: the type of the account
    the connection came from, where it is known (a lab VM), so that the rule and the way out are its own."""
    name = profile.name
    elsewhere = "not the provider's block, which is silent"
    if outcome == "refused":
        return (f"the target answered with a refusal: {elsewhere}",
                f"check that your relay or MX listens on port {port}")
    if outcome == "unreachable":
        return (f"no route, or an ICMP error on the way: {elsewhere}",
                "check this machine's route for this address family and the target's firewall")
    if outcome == "error":
        return f"the connection failed: {elsewhere}", "read the detail above"
    if port not in profile.restricted_ports:
        never = "never restricts" if port in profile.never_restricted_ports else "does not restrict"
        if outcome == "connected":
            return f"{name} {never} port {port}", f"nothing to do: port {port} reaches the target from here"
        return (f"{name} {never} port {port}: the silence comes from somewhere else",
                "check the target's firewall, and this machine's own (security group, firewall rules)")
    if account is not None:
        return _judge_for(profile, port, outcome, account)
    rule = f"{name} restricts port {port} ({who_is_blocked(profile)})"
    if outcome == "connected":
        return (f"{rule}, yet it connected: this {profile.account_word} is exempt, or not blocked",
                f"nothing to do: port {port} reaches the target from here")
    return f"{rule}: this silence is how its block looks", f"{exemption_step(profile)}{profile.advice}"


def _judge_for(profile: Profile, port: int, outcome: str, t: SubscriptionType) -> tuple[str, str]:
    """The same, for an account of type t: its own rule, and only its own way out."""
    rule = f"{profile.name} restricts port {port}; this {profile.account_word} is {t.name}: {type_says(profile, t)}"
    if outcome == "connected":
        return f"{rule}; it connected", f"nothing to do: port {port} reaches the target from here"
    if not t.blocked_by_default:
        return (f"{rule}: the silence comes from somewhere else",
                "check the target's firewall, and this machine's own (security group, firewall rules)")
    if not t.exemptible:
        return (f"{rule}: this silence is how its block looks, and no exemption lifts it for {t.name}",
                profile.advice)
    way_out = EXEMPTION_WORDS[t.exemption] + exemption_conditions(profile)
    step = f"until the owner has it lifted ({way_out})" if t.exemption == Exemption.REACTIVE else \
        f"ask for an exemption: {way_out}"
    return f"{rule}: this silence is how its block looks", f"{step}; meanwhile, {profile.advice}"


def exemption_step(profile: Profile) -> str:
    """'ask for an exemption: PATH (CONDITIONS); meanwhile, ' where a blocked account type has a path; else ''."""
    path, not_all = exemption_paths(profile)
    if not path:
        return ""
    some = f" (where your {profile.account_word} type has one)" if not_all else ""
    return f"ask for an exemption{some}: {path}; meanwhile, "
