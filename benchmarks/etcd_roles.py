"""The children of the etcd fleet benchmark (benchmarks/etcd_fleet.py), each in a network namespace, spoken to in
JSON lines (benchmarks/child.py): `python -m benchmarks.etcd_roles ROLE`.

    operator   in the etcd namespace: loads a state into etcd (as `enforcer state copy` does, see load()), makes a
               change through the CLI's entry point and says when it returned, times a command's own work
               (benchmarks.control.own_ms), compacts etcd.
    prober     in a lab VM's namespace: TCP connections to the internet host's port 25 through its gateway, each a
               new SYN, until one is accepted (`until`), or for a while, counted (`steady`).

The parent never loads gRPC (its children enter their namespaces in a preexec function, which gRPC's fork
handlers disturb): every etcd call is made here.
"""

from __future__ import annotations

import contextlib
import io
import json
import select
import socket
import sys
import time
from typing import Any

# ---------------------------------------------------------------- operator

def load(sqlite: str, url: str) -> dict[str, Any]:
    """The SQLite state at `sqlite` copied into the empty prefix of `url` as `enforcer state copy` does it
    (enforcer.state.etcd_copy: in batches, meta/format last), timed: the read of the SQLite state apart."""
    from enforcer.core.rows import TABLES
    from enforcer.state.etcd_client import parse_url
    from enforcer.state.etcd_copy import copy_in
    from enforcer.state.etcd_layout import end_of
    from enforcer.state.etcd_store import EtcdStore
    from enforcer.state.store import Store

    started = time.perf_counter()
    source = Store(sqlite)
    try:
        inv, _ = source.read()
    finally:
        source.close()
    read = time.perf_counter() - started
    store = EtcdStore(parse_url(url))
    try:
        copy_in(store, inv, f"benchmark load of {sqlite}")
        root = store.keys.everything()
        keys = int(store.client.range(root, end_of(root), count_only=True).count)
    finally:
        store.close()
    return {"rows": sum(len(getattr(inv, t)) for t in TABLES), "keys": keys, "read_s": read,
            "seconds": time.perf_counter() - started}


def change(state: str, argv: list[str]) -> dict[str, Any]:
    """One command through the CLI's entry point in this process (as `enforcer --state STATE ARGV` runs it): when
    it started and returned (CLOCK_MONOTONIC, the machine's, which the probers read too), and the state's
    generation after it (read after the timing)."""
    from enforcer.cli.main import main as cli_main
    from enforcer.state.backend import open_state

    out = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli_main(["--state", state, *argv])
    returned = time.monotonic()
    if code:
        raise RuntimeError(f"enforcer {' '.join(argv)}: exit {code}: {out.getvalue().strip()}")
    backend = open_state(state)
    try:
        generation = backend.generation()
    finally:
        backend.close()
    return {"started": started, "returned": returned, "generation": generation}


def own(state: str, argv: list[str], rounds: int) -> dict[str, Any]:
    """benchmarks.control's measure of a command's own work, `rounds` times."""
    from benchmarks.control import own_ms
    return {"ms": [own_ms(state, argv) for _ in range(rounds)]}


def compact(url: str) -> dict[str, Any]:
    """etcd compacted up to its current revision: at once for readers and watchers (a read or a watch from an
    older revision is refused from then on); its backend frees the old revisions after the call returns (waiting
    for that, `physical`, takes longer than the client's 10 s at a million VMs)."""
    from enforcer.state.etcd_client import parse_url
    from enforcer.state.etcd_store import EtcdStore

    store = EtcdStore(parse_url(url))
    try:
        revision, generation = store.head()
        client = store.client
        started = time.perf_counter()
        client._call(client.kv.Compact, client.rpc.CompactionRequest(revision=revision))
        return {"revision": revision, "generation": generation, "seconds": time.perf_counter() - started}
    finally:
        store.close()


def read_rows(url: str) -> dict[str, Any]:
    """What a gateway's start reads from etcd, timed apart from the rest of its start: the snapshot's settings and
    every address row at the head (EtcdStore.address_rows_at, pages of 10,000), and the first and the last page's
    time (etcd 3.4 walks the rest of the range for each page's count)."""
    from enforcer.state.etcd_client import parse_url
    from enforcer.state.etcd_store import EtcdStore

    store = EtcdStore(parse_url(url))
    try:
        revision, _ = store.head()
        started = last = time.perf_counter()
        pages: list[float] = []
        rows = 0
        for rows, _ in enumerate(store.address_rows_at(revision), 1):
            if rows % 10_000 == 0:
                now = time.perf_counter()
                pages.append(now - last)
                last = now
        return {"rows": rows, "seconds": time.perf_counter() - started, "first_page": pages[0] if pages else 0.0,
                "last_page": pages[-1] if pages else 0.0, "pages": len(pages)}
    finally:
        store.close()


def operator() -> None:
    say({"ready": True})
    for line in sys.stdin:
        ask = json.loads(line)
        try:
            if ask["do"] == "load":
                answer = load(ask["sqlite"], ask["url"])
            elif ask["do"] == "change":
                answer = change(ask["state"], ask["argv"])
            elif ask["do"] == "own":
                answer = own(ask["state"], ask["argv"], ask["rounds"])
            elif ask["do"] == "rows":
                answer = read_rows(ask["url"])
            elif ask["do"] == "compact":
                answer = compact(ask["url"])
            else:
                answer = {"error": f"no such request: {ask['do']}"}
        except Exception as e:  # noqa: BLE001 - whatever failed, answer: the parent reports it and stops
            answer = {"error": f"{type(e).__name__}: {e}"}
        say(answer)


# ---------------------------------------------------------------- prober


def attempt(dst: str, port: int, wait: float) -> tuple[float, bool]:
    """One new TCP connection (one SYN): (when its SYN was sent, whether the SYN-ACK came within `wait` s)."""
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setblocking(False)
        sent = time.monotonic()
        s.connect_ex((dst, port))
        _, writable, _ = select.select([], [s], [], wait)
        return sent, bool(writable) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    finally:
        s.close()


def until(dst: str, port: int, seconds: float, wait: float) -> dict[str, Any]:
    """SYNs, each on a new connection, until one is accepted (bounded by `seconds`): when that one was sent."""
    deadline = time.monotonic() + seconds
    tries = 0
    while time.monotonic() < deadline:
        sent, ok = attempt(dst, port, wait)
        tries += 1
        if ok:
            return {"at": sent, "tries": tries}
    return {"at": None, "tries": tries}


def steady(dst: str, port: int, seconds: float, every: float, wait: float) -> dict[str, Any]:
    """A SYN every `every` s for `seconds` at most, until a line comes on stdin: how many were accepted, how many
    not, the longest time between two accepted ones."""
    end = time.monotonic() + seconds
    accepted = refused = 0
    last = gap = 0.0
    while time.monotonic() < end:
        sent, ok = attempt(dst, port, wait)
        if ok:
            gap = max(gap, sent - last) if last else gap
            last, accepted = sent, accepted + 1
        else:
            refused += 1
        if select.select([sys.stdin], [], [], max(0.0, sent + every - time.monotonic()))[0]:
            sys.stdin.readline()
            break
    return {"accepted": accepted, "refused": refused, "longest_gap": gap}


def prober() -> None:
    say({"ready": True})
    for line in sys.stdin:
        ask = json.loads(line)
        if ask["do"] == "until":
            say({"started": time.monotonic()})
            say(until(ask["dst"], ask["port"], ask["seconds"], ask["wait"]))
        elif ask["do"] == "steady":
            say({"started": time.monotonic()})
            say(steady(ask["dst"], ask["port"], ask["seconds"], ask["every"], ask["wait"]))
        else:
            say({"error": f"no such request: {ask['do']}"})


def say(answer: dict[str, Any]) -> None:
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    {"operator": operator, "prober": prober}[sys.argv[1]]()
