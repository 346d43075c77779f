"""sd_notify(3): tell systemd about readiness, stopping and liveness; a no-op outside systemd."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("enforcer")


def notify(message: str) -> None:
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), target)
        except OSError as e:
            log.warning("sd_notify failed: %s", e)
