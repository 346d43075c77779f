"""The commands the core's sentences point a person to.

The only place in the core that knows the CLI's command names: renaming a command changes this file, not the
policy. Each function returns the command line a person would type, with upper-case placeholders for what
they must fill in.
"""

from __future__ import annotations

PROGRAM = "enforcer"


def _command(*words: str) -> str:
    return " ".join((PROGRAM, *words))


def list_subscriptions() -> str:
    return _command("subscription", "list")


def set_type(subscription: str) -> str:
    return _command("subscription", "set-type", subscription, "TYPE")


def list_vnets() -> str:
    return _command("vnet", "list")


def add_vnet() -> str:
    return _command("vnet", "add")


def remove_vnet(vnet: str) -> str:
    return _command("vnet", "remove", vnet)


def add_subnet(vnet: str, subnet: str = "NAME", prefix: str = "PREFIX") -> str:
    return _command("vnet", "subnet-add", vnet, subnet, prefix)


def remove_subnet(vnet: str, subnet: str = "NAME") -> str:
    return _command("vnet", "subnet-remove", vnet, subnet)


def refresh_delegated(vnet: str = "VNET") -> str:
    return _command("vnet", "refresh-delegated", vnet)


def list_resources() -> str:
    return _command("vm", "list")


def add_resource() -> str:
    return _command("vm", "add")


def remove_resource(resource: str) -> str:
    return _command("vm", "remove", resource)


def start(resource: str) -> str:
    return _command("vm", "start", resource)


def restart(resource: str = "NAME") -> str:
    return _command("vm", "restart", resource)


def diagnose(subscription: str) -> str:
    return _command("diagnose", subscription)


def list_exemptions() -> str:
    return _command("exemption", "list")


def grant_exemption(subscription: str) -> str:
    return _command("exemption", "grant", subscription, "--case", "ID")


def request_exemption(subscription: str) -> str:
    return _command("exemption", "request", subscription)


def set_attributes(subscription: str) -> str:
    return _command("subscription", "set", subscription)


def revoke_exemption(subscription: str) -> str:
    return _command("exemption", "revoke", subscription)


def show_profile(profile: str) -> str:
    return _command("profile", "show", profile)
