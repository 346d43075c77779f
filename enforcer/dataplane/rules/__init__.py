"""Kernel rules, one backend per tool behind one contract (base.RuleBackend)."""

from __future__ import annotations

from .base import RuleBackend, RuleError, RuleSpec
from .iptables import IptablesBackend
from .nftables import NftablesBackend

BACKENDS: dict[str, type[RuleBackend]] = {"iptables": IptablesBackend, "nftables": NftablesBackend}


def choose_backend(name: str) -> RuleBackend:
    """`auto` takes native nftables only where the kernel has the queue expression, else iptables."""
    backend: RuleBackend
    if name == "auto":
        nft = NftablesBackend()
        backend = nft if nft.supported() else IptablesBackend()
    elif name in BACKENDS:
        backend = BACKENDS[name]()
    else:
        raise RuleError(f"unknown backend '{name}'; use auto, iptables or nftables")
    backend.check_tools()
    return backend


__all__ = ["BACKENDS", "IptablesBackend", "NftablesBackend", "RuleBackend", "RuleError", "RuleSpec",
           "choose_backend"]
