"""The daemon's settings: one name per setting, from the command-line option to the config file key to the field
the daemon reads. Each setting's type is a click ParamType, so that a value from the file is validated exactly
like the same value on the command line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import click

from ..errors import UserError
from .files import read_text

DEFAULT_STATE = "/var/lib/enforcer/state.db"
DEFAULT_SOCKET = "/run/enforcer/control.sock"
DEFAULT_CONFIG = "/etc/enforcer/enforcer.toml"


class Backend(StrEnum):
    AUTO = "auto"          # native nftables where the kernel has the queue expression, else iptables
    IPTABLES = "iptables"
    NFTABLES = "nftables"


class WhenDown(StrEnum):
    BLOCK = "block"  # the rule drops when no worker is bound
    ALLOW = "allow"  # --queue-bypass: every SYN passes unjudged


class QueueFull(StrEnum):
    DROP = "drop"
    ACCEPT = "accept"  # the kernel's fail-open flag


@dataclass(frozen=True)
class Settings:
    """What `enforcer run` runs with. The field names are the option names and the config file's keys."""
    state: str = DEFAULT_STATE
    backend: Backend = Backend.AUTO
    queue: int = 25                  # the first NFQUEUE number
    queues: int = 1
    when_down: WhenDown = WhenDown.BLOCK
    queue_full: QueueFull = QueueFull.DROP
    queue_length: int = 4096         # packets the kernel keeps waiting per queue
    socket_buffer: int = 4 << 20     # the queue's netlink receive buffer, bytes
    socket: str = DEFAULT_SOCKET
    socket_group: str | None = None
    metrics: str | None = None       # ADDRESS:PORT for Prometheus
    check_interval: float = 2.0      # seconds between checks that the rules are in place
    kernel_cache: bool = False       # judged sources' later SYNs decided in the kernel (sets the worker fills)
    kernel_cache_timeout: int = 300  # seconds a source stays in the kernel cache
    gateway_name: str | None = None  # an etcd state: the name this gateway publishes (default: the host name)

    @classmethod
    def of(cls, values: dict[str, Any]) -> Settings:
        """Settings from validated values (plain strings for the choices)."""
        enums: dict[str, type[StrEnum]] = {"backend": Backend, "when_down": WhenDown, "queue_full": QueueFull}
        converted: dict[str, Any] = {k: enums[k](v) if k in enums else v for k, v in values.items()}
        return cls(**converted)


def _choice(enum: type[StrEnum]) -> click.Choice[str]:
    return click.Choice([str(m) for m in enum])


@dataclass(frozen=True)
class Setting:
    name: str
    type: click.ParamType  # type: ignore[type-arg]  # generic only in some click releases
    help: str
    metavar: str | None = None

    @property
    def default(self) -> Any:
        value = DEFAULTS[self.name]
        return str(value) if isinstance(value, StrEnum) else value  # click matches choices by their text

    @property
    def option(self) -> str:
        """The option's name; a boolean setting is a flag with its negation (--kernel-cache/--no-kernel-cache)."""
        name = self.name.replace("_", "-")
        return f"--{name}/--no-{name}" if self.type is click.BOOL else f"--{name}"


DEFAULTS = {f.name: f.default for f in fields(Settings)}

# Every setting of `enforcer run` but the state, which is the CLI's global --state.
SETTINGS: tuple[Setting, ...] = (
    Setting("backend", _choice(Backend),
            "Kernel rules: native nftables where the kernel has the queue expression, else iptables."),
    Setting("queue", click.IntRange(0, 65535), "The (first) NFQUEUE number."),
    Setting("queues", click.IntRange(1, 64), "Queues balanced across worker processes, one per queue."),
    Setting("when_down", _choice(WhenDown),
            "What port 25 SYNs meet while the daemon is down (killed, crashed) and its rules remain."),
    Setting("queue_full", _choice(QueueFull), "What the kernel does with a SYN when the queue is full."),
    Setting("queue_length", click.IntRange(16, 1 << 20), "Packets the kernel keeps waiting per queue."),
    Setting("socket_buffer", click.IntRange(1 << 16, 1 << 30), "Receive buffer of the queue's netlink socket, bytes."),
    Setting("socket", click.STRING, "The control socket."),
    Setting("socket_group", click.STRING, "A group that may also use the control socket."),
    Setting("metrics", click.STRING, "Serve Prometheus metrics there.", metavar="ADDRESS:PORT"),
    Setting("check_interval", click.FloatRange(0.1, 3600), "Seconds between checks that our rules are still in place."),
    Setting("kernel_cache", click.BOOL,
            "Decide the later SYNs of a source the daemon has judged in the kernel (its first SYN per table "
            "generation is still queued); sources bound to an interface or MAC are always queued."),
    Setting("kernel_cache_timeout", click.IntRange(1, 86400),
            "Seconds a judged source stays in the kernel cache.", metavar="S"),
    Setting("gateway_name", click.STRING,
            "An etcd state: the name this gateway publishes its applied revision under (default: the host name).",
            metavar="NAME"),
)
BY_NAME = {s.name: s for s in SETTINGS}
# How the daemon reaches an etcd state: the CLI's global --etcd-* options (or their variables), or these keys. No
# password key: a config file is read by more than the daemon; the password comes from $ENFORCER_ETCD_PASSWORD (the
# unit's EnvironmentFile, readable by root alone).
ETCD_KEYS = ("etcd_cacert", "etcd_cert", "etcd_key", "etcd_user")


def read_settings_file(path: str) -> dict[str, Any]:
    """The config file's settings, each validated like the command-line option it stands for."""
    text = read_text(path, "the config")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}; fix the syntax") from None
    except RecursionError:  # tomllib recurses once per nested array or table
        raise UserError(f"{path}: nested too deeply to read; a config needs no nesting") from None
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "state":
            if not isinstance(value, str) or not value:
                raise UserError(f"{path}: state: expected a path; write state = \"{DEFAULT_STATE}\"")
            values["state"] = value
            continue
        if key in ETCD_KEYS:
            if not isinstance(value, str) or not value:
                example = "gateway" if key == "etcd_user" else f"/etc/enforcer/etcd/{key[5:]}.pem"
                raise UserError(f"{path}: {key}: expected a string; write {key} = \"{example}\"")
            values[key] = value
            continue
        setting = BY_NAME.get(key)
        if setting is None:
            raise UserError(f"{path}: unknown key '{key}'; use one of: state, {', '.join([*BY_NAME, *ETCD_KEYS])}")
        try:
            values[key] = setting.type.convert(value, None, None)
        except click.BadParameter as e:
            raise UserError(f"{path}: {key}: {e.message.rstrip('.')}; fix it or remove the key") from None
    return values
