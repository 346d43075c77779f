"""The control channel between the CLI and the daemon: a Unix socket under /run/enforcer/ that only root, the
daemon's own user or a configured group can open, with the peer's credentials checked on every connection.
One JSON request line, one JSON answer line.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel (SO_PEERCRED)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)


def _groups_of(pid: int) -> set[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


class ControlServer:
    def __init__(self, path: str, handle: Callable[[dict[str, Any]], dict[str, Any]], group: str | None = None):
        self.path = Path(path)
        self.handle = handle
        self.gid = grp.getgrnam(group).gr_gid if group else None
        self.sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def allowed(self, pid: int, uid: int, gid: int) -> bool:
        if uid in (0, os.getuid()):
            return True
        return self.gid is not None and (gid == self.gid or self.gid in _groups_of(pid))

    def check_path(self) -> None:
        """Refuse, before anything is set up, a socket path that cannot work."""
        if len(str(self.path).encode()) > 107:
            raise UserError(f"--socket {self.path}: longer than a Unix socket path may be (107 bytes)")
        if self.path.exists() and not self.path.is_socket():
            raise UserError(f"--socket {self.path}: a file that is not a socket is there; move it away")

    def start(self) -> None:
        self.check_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_socket():
                self.path.unlink()  # a stale socket: preflight found no daemon answering on it
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)   # created 0600: nobody else in the window before chmod
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            if self.gid is not None:
                os.chown(self.path, -1, self.gid, follow_symlinks=False)
                os.chmod(self.path, 0o660)
        except OSError as e:
            raise UserError(f"cannot open the control socket {self.path}: {e.strerror}") from None
        sock.listen(16)
        self.sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                if not self.allowed(*peer_credentials(conn)):
                    answer = {"ok": False, "error": "permission denied: only root or the control group may ask"}
                else:
                    line = conn.makefile("r").readline()
                    answer = self.handle(json.loads(line))
            except (OSError, ValueError) as e:
                answer = {"ok": False, "error": f"bad request: {e}"}
            try:
                conn.sendall((json.dumps(answer, sort_keys=True) + "\n").encode())
            except OSError:
                pass

    def stop(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
            try:
                self.path.unlink()
            except OSError:
                pass


def ask(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
    """Send one request to the daemon; None when no daemon listens there."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall((json.dumps(request) + "\n").encode())
            answer: dict[str, Any] = json.loads(s.makefile("r").readline())
            return answer
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        return {"ok": False, "error": f"permission denied on {path}: run as root or join the control group"}
    except (OSError, ValueError) as e:
        return {"ok": False, "error": f"no answer on {path}: {e}"}
