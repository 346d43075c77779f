"""The control socket under abuse: descriptor exhaustion, huge or malformed requests, a handler that raises,
bursts of connections and clients that never finish. A real ControlServer on a real Unix socket each time; the
cases that measure the server's descriptors or memory run it in a subprocess of its own.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from support.paths import ROOT
from enforcer.dataplane.control import ControlServer, ask

LIMIT = 65536


class Echo:
    """The handle function: answers with the command it got, raises on 'raise', remembers what it was given."""

    def __init__(self) -> None:
        self.given: list[type] = []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.given.append(type(request))
        command = request.get("cmd")
        if command == "raise":
            raise ZeroDivisionError("the handler broke")
        return {"ok": True, "echo": command}


@pytest.fixture
def short_dir(tmp_path_factory) -> Path:
    # a Unix socket path must stay under 108 bytes; tmp_path carries the (long) test name
    return tmp_path_factory.mktemp("c")


@pytest.fixture
def serve(short_dir) -> Iterator[Any]:
    """serve(**options) -> (server, echo): a started in-process server, stopped after the test."""
    started: list[ControlServer] = []

    def start(**options: Any) -> tuple[ControlServer, Echo]:
        echo = Echo()
        server = ControlServer(str(short_dir / f"s{len(started)}.sock"), echo, **options)
        server.start()
        started.append(server)
        return server, echo

    yield start
    for server in started:
        server.stop()


def raw(path: str | Path, payload: bytes, timeout: float = 5.0) -> dict[str, Any] | None:
    """Send bytes as they are and read one answer line; None when the server closed without one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all; its answer is still there to read
        line = s.makefile("rb").readline()
    return json.loads(line) if line else None


# ------------------------------------------------------------ a server in a process of its own

SERVER = r"""
import logging, resource, sys
from enforcer.dataplane.control import ControlServer

logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
path, nofile = sys.argv[1], int(sys.argv[2])
server = ControlServer(path, lambda request: {"ok": True, "echo": request.get("cmd")})
if nofile:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""


class ServerProcess:
    def __init__(self, path: Path, nofile: int = 0):
        self.path = path
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(path), str(nofile)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "ready\n", self.finish()

    def status(self, key: str) -> int:
        """A /proc/PID/status value in kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc/{self.proc.pid}/status")

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def finish(self) -> str:
        """Stop the server; what it logged."""
        try:
            _, err = self.proc.communicate(input="", timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def server_process(short_dir) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start(nofile: int = 0) -> ServerProcess:
        started.append(ServerProcess(short_dir / f"p{len(started)}.sock", nofile))
        return started[-1]

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.finish()


def test_the_socket_survives_running_out_of_descriptors(server_process):
    nofile = 32
    server = server_process(nofile)
    held = []
    deadline = time.monotonic() + 3
    while len(held) < 3 * nofile and time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect(str(server.path))
        except BlockingIOError:
            s.close()   # the backlog is full for now: give the server a moment to accept
            time.sleep(0.01)
            continue
        held.append(s)
    while server.descriptors() < nofile and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.descriptors() == nofile, "the server never ran out of descriptors: the test proves nothing"
    time.sleep(1.5)     # accept() fails over and over meanwhile
    for s in held:
        s.close()
    assert ask(str(server.path), {"cmd": "after"}) == {"ok": True, "echo": "after"}
    log = server.finish()
    assert "Traceback" not in log
    assert log.count("accept failed") == 1, log       # rate-limited: one line, not one per failure
    assert "Too many open files" in log


def test_a_10_mib_request_is_refused_without_buffering_it(server_process):
    server = server_process()
    peak_before = server.status("VmHWM")
    payload = b'{"cmd": "big", "pad": "' + b"x" * (10 << 20) + b'"}\n'
    assert raw(server.path, payload, timeout=10) == {"ok": False,
                                                     "error": f"request too large (limit {LIMIT} bytes)"}
    grown_kib = server.status("VmHWM") - peak_before
    assert grown_kib < 4096, f"the server's peak memory grew by {grown_kib} KiB"
    assert ask(str(server.path), {"cmd": "next"}) == {"ok": True, "echo": "next"}
    assert "Traceback" not in server.finish()


def test_a_request_just_under_the_limit_is_handled(serve):
    server, _ = serve()
    request = json.dumps({"cmd": "fits", "pad": ""}).encode()
    request = request[:-2] + b"x" * (LIMIT - len(request)) + b'"}'
    assert len(request) == LIMIT
    assert raw(server.path, request + b"\n") == {"ok": True, "echo": "fits"}
    assert raw(server.path, request[:-2] + b'x"}\n') == {"ok": False,
                                                          "error": f"request too large (limit {LIMIT} bytes)"}


# ------------------------------------------------------------ malformed requests, a broken handler

@pytest.mark.parametrize("payload, says", [
    (b"[]\n", "bad request: expected a JSON object"),
    (b"1\n", "bad request: expected a JSON object"),
    (b"null\n", "bad request: expected a JSON object"),
    (b'"x"\n', "bad request: expected a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "request too large"),
    (b"[" * 30_000 + b"]" * 30_000 + b"\n", "bad request: nested too deeply"),
    (b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n", "bad request: nested too deeply"),
    (b'{"cmd": "\xff\xfe"}\n', "bad request: not UTF-8"),
    (b"{not json\n", "bad request: not JSON"),
    (b"\n", "bad request: not JSON"),
], ids=["array", "number", "null", "string", "deep-list-100k", "deep-list-30k", "deep-object", "not-utf8",
        "not-json", "empty-line"])
def test_a_request_that_is_not_a_json_object_is_refused_and_the_server_goes_on(serve, payload, says):
    server, echo = serve()
    answer = raw(server.path, payload)
    assert answer is not None, "no answer: the handling thread died"
    assert answer["ok"] is False and answer["error"].startswith(says), answer
    assert ask(str(server.path), {"cmd": "next"}) == {"ok": True, "echo": "next"}
    assert echo.given == [dict]


def test_a_handler_that_raises_is_an_internal_error_with_its_traceback_logged(serve, caplog):
    server, _ = serve()
    with caplog.at_level(logging.ERROR):
        answer = ask(str(server.path), {"cmd": "raise"})
    assert answer is not None and answer["ok"] is False, answer
    assert answer["error"].startswith("internal error") and "ZeroDivisionError" in answer["error"], answer
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert logged, "the handler's traceback was not logged"
    assert ask(str(server.path), {"cmd": "next"}) == {"ok": True, "echo": "next"}


def test_an_answer_that_cannot_be_sent_as_json_is_an_internal_error(short_dir):
    server = ControlServer(str(short_dir / "j.sock"), lambda request: {"ok": True, "value": {1, 2}})
    server.start()
    try:
        answer = ask(str(server.path), {"cmd": "status"})
        assert answer is not None and answer["ok"] is False and answer["error"].startswith("internal error"), answer
    finally:
        server.stop()


# ------------------------------------------------------------ bursts and clients that never finish

def test_500_simultaneous_connects_are_all_answered(serve):
    server, _ = serve()
    n = 500
    barrier = threading.Barrier(n)
    answers: list[dict[str, Any] | None] = [None] * n

    def client(i: int) -> None:
        barrier.wait()
        answers[i] = ask(str(server.path), {"cmd": f"n{i}"}, timeout=20)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - started
    wrong = [(i, a) for i, a in enumerate(answers) if a != {"ok": True, "echo": f"n{i}"}]
    assert not wrong, f"{len(wrong)} of {n} not answered, e.g. {wrong[:3]}"
    assert elapsed < 30


def test_when_every_handler_is_taken_a_client_hears_busy_at_once(serve):
    server, _ = serve(max_handlers=2, request_timeout=5)
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for s in idle:
            s.connect(str(server.path))   # and send nothing: each holds a handler
        time.sleep(0.3)
        started = time.monotonic()
        answer = raw(server.path, b'{"cmd": "third"}\n')
        assert answer is not None and answer["ok"] is False and answer.get("busy") is True, answer
        assert time.monotonic() - started < 1
    finally:
        for s in idle:
            s.close()
    assert ask(str(server.path), {"cmd": "after"}) == {"ok": True, "echo": "after"}


def test_a_request_trickling_in_is_cut_off_at_the_deadline(serve):
    server, echo = serve(request_timeout=1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(server.path))
        s.sendall(b'{"cmd": ')
        started = time.monotonic()
        reply = b""
        while not reply.endswith(b"\n") and time.monotonic() - started < 6:
            try:
                s.sendall(b" ")   # one byte every 0.2 s: each well inside any per-read timeout
            except OSError:
                pass
            if select.select([s], [], [], 0.2)[0]:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        elapsed = time.monotonic() - started
    answer = json.loads(reply)
    assert answer["ok"] is False and "bad request" in answer["error"] and "1 s" in answer["error"], answer
    assert elapsed < 2.5, f"the request was allowed {elapsed:.1f} s"
    assert echo.given == []


def test_stop_ends_the_accept_thread_and_removes_the_socket(serve):
    server, _ = serve()
    thread = server._thread
    assert thread is not None and thread.is_alive()
    server.stop()
    thread.join(timeout=3)
    assert not thread.is_alive()
    assert not server.path.exists()
