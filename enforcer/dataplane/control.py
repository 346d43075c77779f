"""The control channel between the CLI and the daemon: a Unix socket under /run/enforcer/ that only root, the
daemon's own user or a configured group can open, with the peer's credentials checked on every connection.
One JSON request line, one JSON answer line.

Whoever can open the socket must not be able to take it down: a request is read up to a size limit and a
deadline, only a JSON object reaches the handler, a handler's exception becomes an answer, the handler threads
are bounded (a client beyond them hears "busy" at once), and a failing accept() (descriptors run out) is retried
with a backoff instead of ending the accept loop.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError

log = logging.getLogger("enforcer.control")

MAX_REQUEST = 64 * 1024         # bytes in a request line; the CLI's requests are a few dozen
MAX_HANDLERS = 64               # connections being answered at once; more hear "busy"
REQUEST_TIMEOUT = 5.0           # seconds for a whole request line to arrive, however slowly it trickles
BACKLOG = max(512, socket.SOMAXCONN)    # a burst of clients waits in the queue instead of being refused
BUSY: dict[str, Any] = {"ok": False, "busy": True, "error": "busy: every control handler is taken; try again"}
DENIED: dict[str, Any] = {"ok": False, "error": "permission denied: only root or the control group may ask"}
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


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


class BadRequest(Exception):
    """A request refused before the handler sees it; the message is the answer's error."""


def read_request(conn: socket.socket, timeout: float, limit: int = MAX_REQUEST) -> bytes:
    """The first line on conn, without its newline, arriving within timeout seconds in all; never buffers more
    than limit + 1 bytes of it."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while len(buf) <= limit:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            conn.settimeout(remaining)   # a deadline for the whole line, not per read: a trickle ends too
            chunk = conn.recv(limit + 1 - len(buf))
        except TimeoutError:
            raise BadRequest(f"bad request: no complete request line within {timeout:g} s") from None
        end = chunk.find(b"\n")
        buf += chunk if end < 0 else chunk[:end]
        if end >= 0 or not chunk:   # a line, or the client closed its side after what it sent
            break
    if len(buf) > limit:
        raise BadRequest(f"request too large (limit {limit} bytes)")
    return bytes(buf)


def parse_request(raw: bytes) -> dict[str, Any]:
    """The request as a JSON object, or BadRequest saying why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"bad request: not UTF-8 (byte {e.start})") from None
    try:
        request = json.loads(text)
    except RecursionError:
        raise BadRequest("bad request: nested too deeply") from None
    except ValueError as e:
        raise BadRequest(f"bad request: not JSON ({e})") from None
    if not isinstance(request, dict):
        kind = _JSON_KINDS.get(type(request), type(request).__name__)
        raise BadRequest(f"bad request: expected a JSON object, got {kind}")
    return request


def _encode(answer: dict[str, Any]) -> bytes:
    return (json.dumps(answer, sort_keys=True) + "\n").encode()


def _refuse(conn: socket.socket, answer: dict[str, Any]) -> None:
    """Answer from the accept thread without ever blocking it: the line fits in an empty socket buffer."""
    with conn:
        try:
            conn.setblocking(False)
            conn.send(_encode(answer))
        except OSError:
            pass


class _AcceptTrouble:
    """Backoff and rate-limited reporting for a failing accept(): running out of descriptors fails every call,
    and a line per failure would flood the journal."""

    FIRST_DELAY = 0.01
    MAX_DELAY = 1.0
    REPORT_EVERY = 60.0

    def __init__(self) -> None:
        self.delay = 0.0
        self.unreported = 0
        self.next_report = 0.0
        self.reported = False   # this run of failures was reported: say when it ends

    def failed(self, error: OSError) -> float:
        """Count a failure; how long to wait before the next accept()."""
        self.unreported += 1
        now = time.monotonic()
        if now >= self.next_report:
            log.warning("control socket: accept failed (%s), %d time(s) since the last report; retrying with a "
                        "backoff of up to %g s, reporting once a minute at most", error, self.unreported,
                        self.MAX_DELAY)
            self.unreported = 0
            self.next_report = now + self.REPORT_EVERY
            self.reported = True
        self.delay = min(self.MAX_DELAY, max(self.FIRST_DELAY, self.delay * 2))
        return self.delay

    def succeeded(self) -> None:
        if self.reported:
            log.warning("control socket: accepting connections again")
        self.delay = 0.0
        self.reported = False


class ControlServer:
    def __init__(self, path: str, handle: Callable[[dict[str, Any]], dict[str, Any]], group: str | None = None, *,
                 max_handlers: int = MAX_HANDLERS, request_timeout: float = REQUEST_TIMEOUT):
        self.path = Path(path)
        self.handle = handle
        self.gid = grp.getgrnam(group).gr_gid if group else None
        self.request_timeout = request_timeout
        self.sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._stopped = threading.Event()

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
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_socket():
                self.path.unlink()  # a stale socket: preflight found no daemon answering on it
            old = os.umask(0o177)   # created 0600: nobody else in the window before chmod
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            if self.gid is not None:
                os.chown(self.path, -1, self.gid, follow_symlinks=False)
                os.chmod(self.path, 0o660)
        except OSError as e:
            sock.close()
            raise UserError(f"cannot open the control socket {self.path}: {e.strerror}") from None
        sock.listen(BACKLOG)
        self.sock = sock
        self._stopped.clear()
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="control", daemon=True)
        self._thread.start()

    def _serve(self, sock: socket.socket) -> None:
        trouble = _AcceptTrouble()
        while not self._stopped.is_set():
            try:
                conn, _ = sock.accept()
            except OSError as e:
                # EMFILE, ENFILE, ENOBUFS, ENOMEM, ECONNABORTED: all pass; only stop() ends this loop
                if not self._stopped.is_set():
                    self._stopped.wait(trouble.failed(e))
                continue
            trouble.succeeded()
            self._dispatch(conn)

    def _dispatch(self, conn: socket.socket) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(conn, BUSY)     # clients that send nothing hold every handler: refuse now, not in 5 s
            return
        try:
            threading.Thread(target=self._answer, args=(conn,), name="control-answer", daemon=True).start()
        except RuntimeError:        # "can't start new thread": the process is out of threads or memory
            self._slots.release()
            _refuse(conn, BUSY)

    def _answer(self, conn: socket.socket) -> None:
        try:
            with conn:
                answer = self._respond(conn)
                conn.settimeout(self.request_timeout)   # a client that never reads must not hold us either
                try:
                    conn.sendall(answer)
                except OSError:
                    pass
        finally:
            self._slots.release()

    def _respond(self, conn: socket.socket) -> bytes:
        try:
            if not self.allowed(*peer_credentials(conn)):
                return _encode(DENIED)
            request = parse_request(read_request(conn, self.request_timeout))
        except BadRequest as e:
            return _encode({"ok": False, "error": str(e)})
        except OSError as e:
            return _encode({"ok": False, "error": f"bad request: {e}"})
        return self._call(request)

    def _call(self, request: dict[str, Any]) -> bytes:
        try:
            return _encode(self.handle(request))
        except Exception as e:
            log.exception("control socket: the request %.80r failed", request.get("cmd"))
            return _encode({"ok": False, "error": f"internal error: {type(e).__name__}: {str(e)[:200]} "
                                                  "(the daemon's log has the traceback)"})

    def stop(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        self._stopped.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)     # wakes the accept() in _serve, which close() alone does not
        except OSError:
            pass
        sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        try:
            self.path.unlink()
        except OSError:
            pass


def ask(path: str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
    """Send one request to the daemon; None when no daemon listens there. A busy daemon is asked again, with a
    growing pause, until timeout seconds have passed in all."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        answer = _ask_once(path, request, max(deadline - time.monotonic(), 0.01))
        if answer is None or not answer.get("busy") or time.monotonic() + pause >= deadline:
            return answer
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def _ask_once(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            try:
                s.sendall((json.dumps(request) + "\n").encode())
            except (BrokenPipeError, ConnectionResetError):
                pass    # the daemon answered before reading it all (busy, or over its size limit): read why
            answer = json.loads(s.makefile("rb").readline())
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        return {"ok": False, "error": f"permission denied on {path}: run as root or join the control group"}
    except BlockingIOError:
        return {"ok": False, "busy": True, "error": f"busy: the daemon's connection queue on {path} is full"}
    except (OSError, ValueError) as e:
        return {"ok": False, "error": f"no answer on {path}: {e}"}
    if not isinstance(answer, dict):
        return {"ok": False, "error": f"no answer on {path}: the daemon's answer is not a JSON object"}
    return answer
