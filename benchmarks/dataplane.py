"""Benchmark of the data plane: SYN verdicts per second at the NFQUEUE, and the connect() latency it adds.

A report, not a test: it exits 0 once it has run (1 if the lab cannot be built or breaks, 130 on Ctrl-C).

    .venv/bin/python benchmarks/bench_dataplane.py [--seconds S] [--reps R] [--quick] [--fifo P]
    .venv/bin/python benchmarks/bench_dataplane.py --remove-stale     # after a run was killed with SIGKILL

Needs root. It builds one namespace topology with enforcer.netns.Topology (a VM, a gateway that forwards, an
internet host; addresses only from 198.18.0.0/15):

    VM <tag>-0 eth0 198.18.x.y/32 ──── gateway <tag>-gw ──── internet <tag>-inet eth0 198.19.252.25/24

(all tagged p25b<6 hex digits>, removed at the end, also on an error, Ctrl-C or SIGTERM) and, in the same run,
measures:

  1. worker     SYN verdicts/s of enforcer.worker.Judge over a table compiled from 100,000 registered VMs (the
                synthetic fleet of bench_table.py), bound with enforcer.worker.bind_queue as the daemon binds it
                (max_len 4096, sock_len 4 MiB, copy range 128, queue-full drops). The generator's source address is
                one of the registered VMs, one allowed on 25, so both consumers accept every SYN.
  2. accept-all the same for a bare netfilterqueue consumer whose callback does only pkt.accept(), bound the same way
                (bind_queue, same options) on another queue number.
  3. no queue   the forwarding rate of the same SYNs with no NFQUEUE rule.
  4. latency    p50/p99 of a TCP connect() from the VM to a listener on port 25 in the internet namespace, through
                the gateway, with the worker's queue rule in place vs with no rule: sequential connects at idle, in
                blocks alternating between the two.

The queue rule is the project's own, IptablesBackend().install(RuleSpec(queue, 1, (25,), (), bypass=False)), run
by a small agent process inside the gateway namespace; configurations 1 and 2 differ only in the queue number it
names. Every consumer is a child process started in the gateway namespace with enforcer.netns.run_in, bound for the
whole run (the idle ones wait in recv()), pinned to the last CPU. Configurations run interleaved, the order
rotating each repetition.

The generator, in the VM namespace and pinned to CPU 0, sends prebuilt SYNs to 198.19.252.25:25 from 16,384
source ports (distinct flows) through an AF_PACKET TX ring (one send() hands 256 frames to the kernel), bounded in
count and time (--rate paces it; by default it sends as fast as it can, 1.5-2x what a consumer takes); --sender
raw sends one packet per send() on an IPPROTO_RAW socket instead (about half the rate, not always enough to saturate
a consumer). During the throughput windows the internet namespace drops TCP to port 25 in raw PREROUTING, so no
reply comes back.

Counting: at the start and end of each window the consumer reads, in its namespace, the kernel's counters of its
queue in /proc/net/netfilter/nfnetlink_queue: verdicts = packets handed to the socket (id_sequence, field 8) -
user_dropped (7) - the change in packets waiting (3). That costs the callbacks nothing, so the bare consumer's
callback really does only pkt.accept(); the worker's own count (the sum of Judge.hits, malformed and errors),
taken at the same moments, is printed alongside as a cross-check. The rate is that count over the consumer's own
wall time between the two reads. Queue drops (queue full, field 6; socket buffer full, field 7) are reported per
window.

A shared machine: by default (--fifo 10) the measured consumer runs SCHED_FIFO during its windows, pinned to its
CPU, so that other tasks cannot take that CPU from it (the kernel still keeps 5% of it for them, which shows as
idle time); the connector and the worker also run SCHED_FIFO in the latency phase. The rest of the time they run
at normal priority; --fifo 0 measures at normal priority throughout. Each window also reports the consumer CPU's
time: the consumer's own, softirq, other tasks', idle. A window is clean when the queue overflowed, still held
packets at the end, the generator offered at least 5% more than the consumer took, and neither other tasks nor
idle time took more than their share; summaries use the clean windows (all, if a configuration has none), and up
to --extra repetitions are added while one has fewer than two. "per CPU-s" is verdicts per second of CPU time the
consumer got.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

VMS = 100_000
SEED = 25
INTERNET4 = "198.19.252.25"   # inside bench_table's reserved 198.19.240.0/20, in no scale set, not an appliance
PORT = 25
FLOWS = 16_384
QUEUE_WORKER, QUEUE_ACCEPT = 25, 26           # 25: the daemon's default queue number
MAX_LEN, SOCK_LEN, FAIL_OPEN = 4096, 4 * 1024 * 1024, False   # the daemon's defaults (enforcer.daemon.Options)
TARGET_RATIO = 0.90
DISTURBED = 0.05      # a window where other tasks took more than this share of the consumer CPU
AHEAD = 1.05          # a clean window: the generator offered at least this many times the verdict rate
WARMUP = 0.5          # seconds of sending before a window opens (the queue fills, caches warm)
TAIL = 5.0            # the sender's own deadline lies this far past the window's end (it is stopped at the end)
CHILD_TIMEOUT = 60.0  # any answer from a child, at most


# ---------------------------------------------------------------- children (each runs this file with --role)


def die_with_parent() -> None:
    """A child must not outlive the benchmark (killed with SIGKILL, say)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def pin(cpu: int) -> None:
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def say(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def queue_line(queue_num: int, path: str = "/proc/net/netfilter/nfnetlink_queue") -> list[int] | None:
    """The kernel's counters of one queue: [queue, portid, waiting, mode, range, queue_dropped, user_dropped,
    id_sequence, 1]; None when the queue is not bound."""
    try:
        with open(path) as f:
            for line in f:
                fields = [int(x) for x in line.split()]
                if fields and fields[0] == queue_num:
                    return fields
    except (OSError, ValueError):
        pass
    return None


def role_consumer(args) -> int:
    """Bind a queue in this (the gateway's) namespace and give verdicts until told to stop.

    stdin commands: "mark" -> {"t", "own", "q"} (own: the worker's own verdict count, None for accept-all),
    "quit" -> final line and exit. Ends by itself after args.lifetime seconds."""
    die_with_parent()
    from enforcer.worker import Judge, bind_queue

    built, judge = {}, None
    if args.kind == "worker":
        from bench_table import build_inventory
        from enforcer.profile import load_profile
        from enforcer.table import compile_table, pack
        t0 = time.perf_counter()
        inv = build_inventory(args.vms, args.seed)
        table = compile_table(inv, load_profile("azure"))
        del inv
        built = {"seconds": round(time.perf_counter() - t0, 2), "entries": len(table),
                 "source_verdict": list(table.lookup(pack(args.source)))}
        judge = callback = Judge(table)
    else:
        def callback(pkt):
            pkt.accept()
    pin(args.cpu)
    try:
        nfq = bind_queue(args.queue, callback, MAX_LEN, SOCK_LEN, FAIL_OPEN)
    except OSError as e:
        say({"error": str(e)})
        return 1

    def own() -> int | None:
        if judge is None:
            return None
        return sum(dict(judge.hits).values()) + judge.malformed + judge.errors

    main_ident = threading.main_thread().ident
    stopping = threading.Event()

    def control() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "mark":
                say({"t": time.monotonic(), "own": own(), "q": queue_line(args.queue)})
            elif command == "quit":
                break
        stopping.set()
        signal.pthread_kill(main_ident, signal.SIGTERM)

    def lifetime() -> None:
        if not stopping.wait(args.lifetime):
            signal.pthread_kill(main_ident, signal.SIGTERM)

    def on_term(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.Thread(target=control, daemon=True).start()
    threading.Thread(target=lifetime, daemon=True).start()
    say({"ready": True, "pid": os.getpid(), "table": built})
    try:
        nfq.run()
    except SystemExit:
        pass
    finally:
        nfq.unbind()
    say({"final": True, "own": own(), "errors": judge.errors if judge else 0,
         "malformed": judge.malformed if judge else 0})
    return 0


def role_agent(args) -> int:
    """Rules in this namespace, on request. stdin: "install Q" (the project's queue rule, queue Q), "remove",
    "run ARGV-as-JSON"; answers one JSON line each. Removes the project's rules when stdin closes."""
    die_with_parent()
    from enforcer.rules import IptablesBackend, RuleSpec
    backend = IptablesBackend()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up and closes our stdin
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    deadline = time.monotonic() + args.lifetime
    try:
        backend.check_tools()
        say({"ready": True, "pid": os.getpid()})
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sys.stdin], [], [], 1.0)
            if not ready:
                continue
            line = sys.stdin.readline()
            if not line:
                break
            command, _, arg = line.strip().partition(" ")
            try:
                if command == "install":
                    spec = RuleSpec(int(arg), 1, (PORT,), (), False)
                    backend.install(spec)
                    say({"ok": backend.installed(spec)})
                elif command == "remove":
                    backend.remove()
                    say({"ok": True})
                elif command == "run":
                    done = subprocess.run(json.loads(arg), capture_output=True, text=True, timeout=30)
                    say({"ok": done.returncode == 0, "out": done.stdout, "err": done.stderr})
                else:
                    say({"ok": False, "err": f"unknown command {command!r}"})
            except Exception as e:  # noqa: BLE001 - answer, the parent decides
                say({"ok": False, "err": str(e)})
    finally:
        try:
            backend.remove()
        except Exception:  # noqa: BLE001
            pass
    return 0


def checksum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_packets(src: str, dst: str, port: int, flows: int, seed: int) -> list[bytes]:
    """Whole IPv4 SYNs (IP header + 20 bytes of TCP, both checksums right: the TX ring sends them as they are),
    one per source port."""
    rng = random.Random(seed)
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    out = []
    for i in range(flows):
        sport = 1024 + i
        tcp = struct.pack("!HHIIBBHHH", sport, port, rng.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
        csum = checksum(s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp)) + tcp)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0x4000, 64, socket.IPPROTO_TCP, 0,
                         s, d)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        out.append(ip + tcp)
    return out


SOL_PACKET, PACKET_VERSION, PACKET_TX_RING, TPACKET_V2, SO_SNDBUFFORCE = 263, 10, 13, 1, 32
TP_STATUS_AVAILABLE, TP_STATUS_SEND_REQUEST, TP_STATUS_WRONG_FORMAT = 0, 1, 4
RING_FRAME, RING_BLOCK, RING_BATCH = 128, 4096, 256   # frame: 32 bytes of tpacket2_hdr + a 54-byte frame


def ring_sender(args, packets: list[bytes], end: float) -> dict:
    """AF_PACKET with a PACKET_TX_RING on eth0: the prebuilt frames sit in the ring for good; each round marks
    RING_BATCH of them for sending (a status word each) and one send() hands them all to the kernel. One
    syscall per RING_BATCH packets instead of one per packet: the generator outruns the consumers."""
    import mmap
    head = bytes.fromhex(args.dst_mac.replace(":", "")) + bytes.fromhex(args.src_mac.replace(":", "")) + b"\x08\x00"
    frames = [head + p for p in packets]
    nframes = len(frames)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    s.bind(("eth0", 0))
    s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * 1024 * 1024)
    s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    blocks = nframes * RING_FRAME // RING_BLOCK
    s.setsockopt(SOL_PACKET, PACKET_TX_RING, struct.pack("IIII", RING_BLOCK, blocks, RING_FRAME, nframes))
    ring = mmap.mmap(s.fileno(), RING_BLOCK * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    for i, f in enumerate(frames):
        ring[i * RING_FRAME + 32:i * RING_FRAME + 32 + len(f)] = f   # data at TPACKET_ALIGN(tpacket2_hdr)
        struct.pack_into("II", ring, i * RING_FRAME, TP_STATUS_AVAILABLE, len(f))  # tp_status, tp_len
    status = memoryview(ring).cast("I")
    step = RING_FRAME // 4
    say({"ready": True, "pid": os.getpid(), "sender": "ring"})
    if not wait_go():
        return {}
    sent = busy = errors = 0
    t0 = time.monotonic()
    end += t0
    monotonic, send, dontwait, rate = time.monotonic, s.send, socket.MSG_DONTWAIT, args.rate
    starts = range(0, nframes, RING_BATCH)
    try:
        while sent < args.max_packets:
            for start in starts:
                marked = 0
                for idx in range(start * step, (start + RING_BATCH) * step, step):
                    if status[idx] == TP_STATUS_AVAILABLE:
                        status[idx] = TP_STATUS_SEND_REQUEST
                        marked += 1
                    elif status[idx] == TP_STATUS_WRONG_FORMAT:
                        raise RuntimeError("the kernel refused a ring frame (TP_STATUS_WRONG_FORMAT)")
                    else:
                        busy += 1   # still in flight from the previous round: skipped
                try:
                    send(b"", dontwait)
                except OSError:
                    errors += 1
                sent += marked
                if rate:
                    ahead = t0 + sent / rate - monotonic()
                    if ahead > 0.0005:
                        time.sleep(ahead)
            if monotonic() >= end:
                break
    finally:
        seconds = time.monotonic() - t0
        status.release()
        ring.close()
        s.close()
    return {"sent": sent, "seconds": seconds, "errors": errors, "busy": busy}


def raw_sender(args, packets: list[bytes], end: float) -> dict:
    """One send() per packet on an IPPROTO_RAW socket (the fallback; about half the ring's rate)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    s.connect((args.dst, 0))
    send = s.send
    chunks = [packets[i:i + 1024] for i in range(0, len(packets), 1024)]
    say({"ready": True, "pid": os.getpid(), "sender": "raw"})
    if not wait_go():
        return {}
    sent = errors = 0
    t0 = time.monotonic()
    end += t0
    monotonic = time.monotonic
    while sent < args.max_packets:
        for chunk in chunks:
            try:
                for p in chunk:
                    send(p)
            except OSError:
                errors += 1  # ENOBUFS and the like: the rest of the chunk is skipped, not counted
                continue
            sent += len(chunk)
        if monotonic() >= end:
            break
    s.close()
    return {"sent": sent, "seconds": time.monotonic() - t0, "errors": errors, "busy": 0}


def wait_go() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], CHILD_TIMEOUT)
    return bool(ready) and sys.stdin.readline().strip() == "go"


def role_sender(args) -> int:
    """Blast the prebuilt SYNs from this (the VM's) namespace: starts on "go", stops after args.seconds or
    args.max_packets, whichever comes first."""
    die_with_parent()
    pin(args.cpu)
    packets = syn_packets(args.source, args.dst, PORT, FLOWS, args.seed)
    if args.sender == "ring":
        try:
            done = ring_sender(args, packets, args.seconds)
        except OSError as e:
            say({"error": f"TX ring: {e}"})
            return 1
    else:
        done = raw_sender(args, packets, args.seconds)
    if done:
        say(done)
    return 0


def role_listener(args) -> int:
    """Accept on port 25 and close at once (the SMTP-ish server of the latency test); ends when stdin closes or
    after args.lifetime."""
    die_with_parent()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.dst, PORT))
    srv.listen(1024)
    say({"ready": True, "pid": os.getpid()})
    deadline = time.monotonic() + args.lifetime
    accepted = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([srv, sys.stdin], [], [], 1.0)
        if sys.stdin in ready and not sys.stdin.readline():
            break
        if srv in ready:
            c, _ = srv.accept()
            c.close()
            accepted += 1
    say({"accepted": accepted})
    return 0


def role_connector(args) -> int:
    """args.count sequential connect()s to the listener, each timed; one untimed connect first. SCHED_FIFO (it
    sleeps in connect() almost all the time) unless --fifo 0, so that other tasks do not delay its wake-up."""
    die_with_parent()
    pin(args.cpu)
    if args.fifo:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.fifo))
        except (OSError, AttributeError):
            pass
    times, failures = [], 0
    perf = time.perf_counter
    for i in range(args.count + 1):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(3.0)
        try:
            t0 = perf()
            c.connect((args.dst, PORT))
            dt = perf() - t0
            if i:
                times.append(dt * 1e6)
        except OSError:
            failures += 1
        finally:
            c.close()
    say({"us": times, "failures": failures})
    return 0


# ---------------------------------------------------------------- the parent


class Child:
    """A child process in a namespace, spoken to in JSON lines over its stdin/stdout."""

    def __init__(self, name: str, namespace: str, argv: list[str], log_dir: str):
        from enforcer.netns import run_in
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = run_in(namespace, [sys.executable, os.path.abspath(__file__), *argv],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, bufsize=0)
        self.buf = b""

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = CHILD_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no answer within {timeout:.0f} s{self.tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited ({self.proc.poll()}){self.tail()}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, line: str, timeout: float = CHILD_TIMEOUT) -> dict:
        self.send(line)
        return self.read(timeout)

    def tail(self) -> str:
        try:
            self.log.flush()
            with open(self.log_path, "rb") as f:
                text = f.read()[-2000:].decode(errors="replace").strip()
            return f":\n{text}" if text else ""
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        p = self.proc
        if p.poll() is None:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(grace)
        self.log.close()


def dev_counters(pid: int, ifname: str) -> tuple[int, int, int]:
    """(rx packets, tx packets, tx dropped) of an interface in the namespace of process pid."""
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == ifname:
                v = [int(x) for x in rest.split()]
                return v[1], v[9], v[11]
    raise RuntimeError(f"no interface {ifname} in the namespace of {pid}")


def softnet_drops() -> int:
    """Packets dropped because a CPU's input backlog was full (all CPUs; /proc/net/softnet_stat column 2)."""
    try:
        with open("/proc/net/softnet_stat") as f:
            return sum(int(line.split()[1], 16) for line in f)
    except (OSError, IndexError, ValueError):
        return 0


def steal_ticks() -> int:
    """Time the hypervisor gave to others, all CPUs (/proc/stat, clock ticks)."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8])
    except (OSError, IndexError, ValueError):
        return 0


def cpu_ticks(cpu: int) -> dict[str, int]:
    """One CPU's time by kind (/proc/stat, clock ticks); softirq time is not charged to the task it interrupted."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:9]]
                    return {"task": v[0] + v[1] + v[2], "idle": v[3] + v[4], "irq": v[5] + v[6], "steal": v[7]}
    except (OSError, ValueError):
        pass
    return {"task": 0, "idle": 0, "irq": 0, "steal": 0}


def task_ticks(pid: int) -> int:
    """utime + stime of a process, all its threads (clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def pick_source(n: int, seed: int):
    """Build the synthetic fleet and pick the generator's source: a running VM with one IPv4 address, allowed
    on 25 by the compiled table. Returns (address, resource name, entry, table size, build seconds)."""
    from bench_table import build_inventory
    from enforcer.profile import load_profile
    from enforcer.table import compile_table, pack
    t0 = time.perf_counter()
    inv = build_inventory(n, seed)
    table = compile_table(inv, load_profile("azure"))
    seconds = time.perf_counter() - t0
    rng = random.Random(seed)
    names = [name for name in inv.resources if name.startswith("vm-")]
    for _ in range(10_000):
        r = inv.resources[rng.choice(names)]
        if len(r.addresses) != 1 or ":" in r.addresses[0] or not r.addresses[0].startswith("198.18."):
            continue
        if r.addresses[0] in ("198.18.0.1",):
            continue
        entry = table.lookup(pack(r.addresses[0]))
        if entry.allow:
            return r.addresses[0], r.name, entry, len(table), seconds
    raise RuntimeError("no allowed IPv4 VM found in the synthetic fleet")


def rt_throttle() -> float:
    """The share of each period the kernel keeps from SCHED_FIFO tasks (1 - sched_rt_runtime_us / period)."""
    try:
        with open("/proc/sys/kernel/sched_rt_runtime_us") as f:
            runtime = int(f.read())
        with open("/proc/sys/kernel/sched_rt_period_us") as f:
            period = int(f.read())
        return 0.0 if runtime < 0 else max(0.0, 1 - runtime / period)
    except (OSError, ValueError):
        return 0.0


def is_clean(row: dict) -> bool:
    """A queue window where the consumer had its CPU to itself and always had packets waiting: no other task
    above DISTURBED of its CPU, not idle beyond what SCHED_FIFO throttling leaves (sched_rt_runtime_us), packets
    dropped because the queue was full, some still waiting when the window closed, and the generator ahead of the
    consumer by AHEAD over the window."""
    if row["config"] == "none":
        return True
    return (row["other"] <= DISTURBED and row["idle"] <= row["idle_limit"] and row["saturated"]
            and row["waiting"][1] > 0 and row["offered"] >= AHEAD * row["rate"])


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Bench:
    def __init__(self, args):
        self.args = args
        self.tag = f"{TAG_PREFIX}{uuid.uuid4().hex[:6]}"
        self.children: list[Child] = []
        self.log_dir = tempfile.mkdtemp(prefix="p25bench-")
        self.topology = None
        self.gw_agent = self.inet_agent = None
        self.consumers: dict[str, Child] = {}
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        multi = len(self.cpus) >= 2
        self.sender_cpu = self.cpus[0] if multi else -1
        self.consumer_cpu = self.cpus[-1] if multi else -1

    def child(self, name: str, namespace: str, *argv: str) -> Child:
        c = Child(name, namespace, list(argv), self.log_dir)
        self.children.append(c)
        return c

    # ------------------------------------------------------------ lab

    def up(self, source: str) -> None:
        from enforcer.netns import Topology
        self.topology = Topology(self.tag, [INTERNET4])
        self.topology.add_vm("gen", [source])
        self.topology.up()
        self.gw = self.topology.gateway.namespace
        self.inet = self.topology.internet.namespace
        self.vm = self.topology.vms["gen"].namespace
        from pyroute2 import NetNS
        with NetNS(self.vm) as v:
            self.vm_mac = v.get_links(ifname="eth0")[0].get_attr("IFLA_ADDRESS")
        with NetNS(self.gw) as g:
            self.gw_mac = g.get_links(ifname=self.topology.vms["gen"].link)[0].get_attr("IFLA_ADDRESS")
        life = str(self.args.lifetime)
        self.gw_agent = self.child("gw-agent", self.gw, "--role", "agent", "--lifetime", life)
        self.inet_agent = self.child("inet-agent", self.inet, "--role", "agent", "--lifetime", life)
        for agent in (self.gw_agent, self.inet_agent):
            agent.read()
        queues = {"worker": QUEUE_WORKER, "accept": QUEUE_ACCEPT}
        for kind, queue in queues.items():
            self.consumers[kind] = self.child(
                f"consumer-{kind}", self.gw, "--role", "consumer", "--kind", kind, "--queue", str(queue),
                "--vms", str(self.args.vms), "--seed", str(self.args.seed), "--source", source,
                "--cpu", str(self.consumer_cpu), "--lifetime", life)
        self.queues = queues
        self.ready = {kind: c.read(120) for kind, c in self.consumers.items()}
        for kind, r in self.ready.items():
            if "error" in r:
                raise RuntimeError(f"consumer {kind}: {r['error']}")

    def rule(self, config: str) -> None:
        """Install the project's queue rule naming this configuration's queue, or remove it (no queue)."""
        if config == "none":
            answer = self.gw_agent.ask("remove")
        else:
            answer = self.gw_agent.ask(f"install {self.queues[config]}")
        if not answer.get("ok"):
            raise RuntimeError(f"rule for {config}: {answer}")

    def inet_drop(self, on: bool) -> None:
        argv = ["iptables", "-w", "-t", "raw", "-A" if on else "-D", "PREROUTING", "-p", "tcp", "--dport",
                str(PORT), "-j", "DROP"]
        answer = self.inet_agent.ask("run " + json.dumps(argv))
        if not answer.get("ok"):
            raise RuntimeError(f"internet drop rule: {answer}")

    def down(self) -> None:
        for c in reversed(self.children):
            try:
                c.stop()
            except Exception:  # noqa: BLE001 - keep cleaning
                pass
        if self.topology is not None:
            from enforcer.netns import remove_tagged
            remove_tagged(self.tag)

    # ------------------------------------------------------------ throughput

    def throughput_phase(self, config: str, source: str) -> dict:
        self.rule(config)
        consumer = self.consumers.get(config)
        if consumer is not None:
            self.priority(consumer, True)
        try:
            return self._throughput_phase(config, source, consumer)
        finally:
            if consumer is not None:
                self.priority(consumer, False)

    def priority(self, consumer: Child, high: bool) -> None:
        """SCHED_FIFO for the consumer's packet thread (its main thread) during a window, unless --fifo 0: other
        tasks on a shared machine then cannot take the consumer's CPU away (the kernel still leaves them 5% of it,
        sched_rt_runtime_us). Back to SCHED_OTHER afterwards (the latency phase runs at normal priority)."""
        if not self.args.fifo:
            return
        pid = consumer.proc.pid
        try:
            for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
                if not high:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                else:
                    # the other threads (the one answering "mark") one step above the packet thread: a FIFO thread
                    # of the same priority would wait for the packet thread to block, which it never does
                    prio = self.args.fifo + (0 if tid == pid else 1)
                    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(prio))
        except (OSError, AttributeError) as e:
            print(f"  (cannot change the consumer's scheduling: {e}; continuing at normal priority)")
            self.args.fifo = 0

    def _throughput_phase(self, config: str, source: str, consumer: Child | None) -> dict:
        a = self.args
        while True:
            sender = self.child(f"sender-{config}", self.vm, "--role", "sender", "--sender", a.sender,
                                "--source", source, "--dst", INTERNET4, "--src-mac", self.vm_mac,
                                "--dst-mac", self.gw_mac, "--seconds", str(WARMUP + a.seconds + TAIL),
                                "--rate", str(a.rate),
                                "--max-packets", str(a.max_packets), "--seed", str(a.seed),
                                "--cpu", str(self.sender_cpu))
            hello = sender.read()
            if "error" not in hello:
                break
            sender.stop()
            if a.sender == "raw":
                raise RuntimeError(f"sender: {hello['error']}")
            print(f"  (sender: {hello['error']}; falling back to the raw-socket sender)")
            a.sender = "raw"
        try:
            sender.send("go")
            time.sleep(WARMUP)
            m0 = self.mark(consumer, sender.proc.pid)
            time.sleep(a.seconds)
            m1 = self.mark(consumer, sender.proc.pid)
        finally:
            if sender.proc.poll() is None:
                sender.proc.terminate()   # the window is closed: no need to send on until the sender's deadline
            sender.stop()
        # let the queue drain before the next phase so that it starts from empty
        if consumer is not None:
            for _ in range(50):
                q = consumer.ask("mark")["q"]
                if q and q[2] == 0:
                    break
                time.sleep(0.05)
        wall = m1["t"] - m0["t"]
        if m1["fwd"] - m0["fwd"] < 0.01 * max(1, m1["vm_tx"] - m0["vm_tx"]):
            raise RuntimeError(f"{config}: the gateway forwarded {m1['fwd'] - m0['fwd']} of "
                               f"{m1['vm_tx'] - m0['vm_tx']} packets the VM sent; the lab is broken")
        ticks = os.sysconf("SC_CLK_TCK")
        row = {"config": config, "wall": wall,
               "steal": (m1["steal"] - m0["steal"]) / ticks / wall / max(1, len(self.cpus)),
               "offered": (m1["vm_tx"] - m0["vm_tx"]) / wall,
               "forwarded": (m1["fwd"] - m0["fwd"]) / wall,
               "backlog_drops": m1["softnet"] - m0["softnet"]}
        if consumer is not None:
            q0, q1 = m0["c"]["q"], m1["c"]["q"]
            cwall = m1["c"]["t"] - m0["c"]["t"]
            # verdicts given in the window: messages the kernel handed to the socket, minus the ones it could not
            # (socket buffer full), minus the change in packets still waiting for a verdict
            verdicts = (q1[7] - q0[7]) - (q1[6] - q0[6]) - (q1[2] - q0[2])
            row.update(verdicts=verdicts, rate=verdicts / cwall, cwall=cwall, queue_dropped=q1[5] - q0[5],
                       cpu=(m1["cpu"] - m0["cpu"]) / ticks / wall,
                       # the consumer CPU's time: softirq, idle, and tasks other than the consumer (disturbance)
                       sirq=(m1["ccpu"]["irq"] - m0["ccpu"]["irq"]) / ticks / wall,
                       idle=(m1["ccpu"]["idle"] - m0["ccpu"]["idle"]) / ticks / wall,
                       other=max(0.0, (m1["ccpu"]["task"] - m0["ccpu"]["task"]) - (m1["cpu"] - m0["cpu"])) / ticks / wall,
                       user_dropped=q1[6] - q0[6], waiting=(q0[2], q1[2]))
            if m0["c"]["own"] is not None:
                row["own"] = m1["c"]["own"] - m0["c"]["own"]
            row["saturated"] = row["queue_dropped"] + row["user_dropped"] > 0
            row["idle_limit"] = DISTURBED + (rt_throttle() if a.fifo else 0.0)
        else:
            row["rate"] = row["forwarded"]
            row["saturated"] = None
        return row

    def mark(self, consumer: Child | None, sender_pid: int) -> dict:
        m = {"c": consumer.ask("mark") if consumer is not None else None}
        m["t"] = time.monotonic()
        m["fwd"] = dev_counters(self.gw_agent.proc.pid, "inet")[1]
        m["vm_tx"] = dev_counters(sender_pid, "eth0")[1]
        m["softnet"] = softnet_drops()
        m["steal"] = steal_ticks()
        m["cpu"] = task_ticks(consumer.proc.pid) if consumer is not None else 0
        m["ccpu"] = cpu_ticks(max(0, self.consumer_cpu))
        return m

    # ------------------------------------------------------------ latency

    def latency(self, blocks: int, per_block: int) -> dict:
        listener = self.child("listener", self.inet, "--role", "listener", "--dst", INTERNET4,
                              "--lifetime", str(self.args.lifetime))
        listener.read()
        out: dict[str, list[float]] = {"worker": [], "none": []}
        failures = {"worker": 0, "none": 0}
        t0, c0 = time.monotonic(), {cpu: cpu_ticks(cpu) for cpu in self.cpus}
        try:
            for b in range(blocks):
                order = ("worker", "none") if b % 2 == 0 else ("none", "worker")
                for config in order:
                    self.rule(config)
                    conn = self.child(f"connect-{config}-{b}", self.vm, "--role", "connector", "--dst", INTERNET4,
                                      "--count", str(per_block), "--cpu", str(self.sender_cpu),
                                      "--fifo", str(self.args.fifo))
                    worker = self.consumers["worker"]
                    if config == "worker":
                        self.priority(worker, True)
                    try:
                        r = conn.read(per_block * 4 + 30)
                    finally:
                        conn.stop()
                        if config == "worker":
                            self.priority(worker, False)
                    out[config] += r["us"]
                    failures[config] += r["failures"]
        finally:
            listener.stop()
        wall, ticks = time.monotonic() - t0, os.sysconf("SC_CLK_TCK")
        busy = {}
        for cpu, before in c0.items():
            after = cpu_ticks(cpu)
            busy[cpu] = (after["task"] + after["irq"] - before["task"] - before["irq"]) / ticks / wall
        return {"us": out, "failures": failures, "busy": busy, "wall": wall}


TAG_PREFIX = "p25b"


def stale_namespaces() -> list[str]:
    """Namespaces left by a run that was killed (SIGKILL: no cleanup could run): this benchmark's tag, and no
    process inside any more (a running benchmark always has some)."""
    import re
    from pyroute2 import netns
    out = []
    for name in netns.listnetns():
        if re.fullmatch(TAG_PREFIX + r"[0-9a-f]{6}-(gw|inet|\d+)", name):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            if not pids:
                out.append(name)
    return out


def machine() -> str:
    import netfilterqueue
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    return (f"nproc {os.cpu_count()} ({model}); kernel {platform.release()} {platform.version()}; python "
            f"{sys.version.split()[0]} ({sys.executable}); netfilterqueue "
            f"{getattr(netfilterqueue, '__version__', '?')}")


def busy_note() -> str:
    """Other CPU-hungry processes right now: a shared machine makes the numbers noisy."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    return f"load average (1 min) before the run: {load:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="length of each saturated window (default 2, "
                    "quick 1)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of each configuration (default 6, quick 3)")
    ap.add_argument("--connects", type=int, default=None, help="timed connects per configuration (default 400, "
                    "quick 150)")
    ap.add_argument("--extra", type=int, default=None, help="at most this many extra repetitions when windows "
                    "were disturbed by other tasks (default 2, quick 1)")
    ap.add_argument("--fifo", type=int, default=10, help="SCHED_FIFO priority of the measured consumer during "
                    "its windows (default 10), so that other tasks on a shared machine do not take its CPU; 0 for "
                    "normal priority")
    ap.add_argument("--quick", action="store_true", help="shorter windows, fewer repetitions and connects")
    ap.add_argument("--sender", choices=("ring", "raw"), default="ring", help="the generator: ring "
                    "(AF_PACKET TX ring, default) or raw (one send() per packet on an IPPROTO_RAW socket)")
    ap.add_argument("--rate", type=float, default=0, help="pace the ring generator at this many packets/s "
                    "(default 0: as fast as it can)")
    ap.add_argument("--remove-stale", action="store_true", help="remove the namespaces a killed run left behind, "
                    "then exit")
    ap.add_argument("--vms", type=int, default=VMS, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--max-packets", type=int, default=50_000_000, help=argparse.SUPPRESS)
    ap.add_argument("--lifetime", type=float, default=900.0, help=argparse.SUPPRESS)
    # the children
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=("worker", "accept"), default="worker", help=argparse.SUPPRESS)
    ap.add_argument("--queue", type=int, default=QUEUE_WORKER, help=argparse.SUPPRESS)
    ap.add_argument("--source", default="", help=argparse.SUPPRESS)
    ap.add_argument("--dst", default=INTERNET4, help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--src-mac", default="", help=argparse.SUPPRESS)
    ap.add_argument("--dst-mac", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:
        return {"consumer": role_consumer, "agent": role_agent, "sender": role_sender,
                "listener": role_listener, "connector": role_connector}[args.role](args)

    args.seconds = args.seconds or (1.0 if args.quick else 2.0)
    args.reps = args.reps or (3 if args.quick else 6)
    args.connects = args.connects or (150 if args.quick else 400)
    args.extra = args.extra if args.extra is not None else (1 if args.quick else 2)
    if os.geteuid() != 0:
        print("bench_dataplane: needs root (network namespaces, iptables, NFQUEUE)", file=sys.stderr)
        return 1

    stale = stale_namespaces()
    if args.remove_stale:
        from pyroute2 import netns
        for name in stale:
            netns.remove(name)
        print(f"removed {len(stale)} stale namespace(s){': ' + ', '.join(stale) if stale else ''}")
        return 0

    print(f"machine: {machine()}")
    print(f"command: {' '.join([os.path.relpath(sys.executable)] + sys.argv)}")
    print(busy_note())
    if stale:
        print(f"note: {len(stale)} namespace(s) left by a killed run ({', '.join(stale)}); --remove-stale removes them")
    configs = ["worker", "accept", "none"]
    # the children end by themselves after this long: well past the longest this run can take
    args.lifetime = max(args.lifetime, 300 + 2 * (args.reps + args.extra) * len(configs) * (args.seconds + 3)
                        + 0.05 * args.connects)
    print(f"windows of {args.seconds:g} s after {WARMUP:g} s of warm-up; {args.reps} repetitions of "
          f"{', '.join(configs)}, order rotating; {args.connects} connects per latency configuration")
    print(f"consumers: {'SCHED_FIFO ' + str(args.fifo) + ' during their windows' if args.fifo else 'normal priority'}; "
          f"generator: {'AF_PACKET TX ring' if args.sender == 'ring' else 'raw socket, one send() per packet'}")
    sys.stdout.flush()

    t_all = time.perf_counter()
    source, vm_name, entry, entries, built = pick_source(args.vms, args.seed)
    print(f"table: {args.vms:,} registered VMs, {entries:,} entries, built+compiled in {built:.1f} s; generator "
          f"source {source} = {vm_name}: {tuple(entry)}")

    bench = Bench(args)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

    main_pid = os.getpid()

    def on_term(signum, frame):
        if os.getpid() != main_pid:
            # a fork of this process (pyroute2's NetNS helper, which it stops with SIGTERM): die as it expects,
            # never run the benchmark's cleanup from there
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(1)
        raise KeyboardInterrupt
    for s in previous:
        signal.signal(s, on_term)
    rows: list[dict] = []
    lat = None
    completed = False
    try:
        bench.up(source)
        print(f"lab: tag {bench.tag}; gateway {bench.gw}, internet {bench.inet} ({INTERNET4}), VM {bench.vm} "
              f"({source}); sender on CPU {bench.sender_cpu}, consumers on CPU {bench.consumer_cpu}")
        for kind, r in bench.ready.items():
            t = r.get("table") or {}
            if t:
                print(f"  consumer {kind} (pid {r['pid']}): queue {bench.queues[kind]}, table of {t['entries']:,} entries built in "
                      f"{t['seconds']} s, source judged {tuple(t['source_verdict'])}")
            else:
                print(f"  consumer {kind} (pid {r['pid']}): queue {bench.queues[kind]}, callback pkt.accept()")
        print()
        bench.inet_drop(True)
        print(f"{'rep':>3} {'config':<8} {'verdicts/s':>11} {'own/s':>9} {'fwd/s':>9} {'offered/s':>9} "
              f"{'q-drops':>9} {'u-drops':>7} {'waiting':>10}  {'cpu: task sirq other idle':>25} {'steal':>5} "
              f"{'backlog':>7}")
        queue_configs = [c for c in configs if c != "none"]
        want_clean = min(2, args.reps)
        rep = 0
        while True:
            if rep >= args.reps:
                short = [c for c in queue_configs
                         if sum(1 for r in rows if r["config"] == c and is_clean(r)) < want_clean]
                if not short or rep >= args.reps + args.extra:
                    break
                print(f"    (extra repetition: fewer than {want_clean} clean windows of {', '.join(short)})")
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]
            for config in order:
                row = bench.throughput_phase(config, source)
                row["rep"] = rep
                rows.append(row)
                own = f"{row['own'] / row['cwall']:,.0f}" if "own" in row else "-"
                flag = ""
                if config == "none":
                    verdicts = q = u = w = cpu = "-"
                else:
                    verdicts = f"{row['rate']:,.0f}"
                    q, u = f"{row['queue_dropped']:,}", f"{row['user_dropped']:,}"
                    w = f"{row['waiting'][0]}->{row['waiting'][1]}"
                    cpu = " ".join(f"{row[k]:>4.0%}" for k in ("cpu", "sirq", "other", "idle"))
                    if row["other"] > DISTURBED:
                        flag += "  disturbed: other tasks on the consumer CPU"
                    if row["idle"] > row["idle_limit"]:
                        flag += "  consumer CPU idle: not saturated all the time"
                    if row["waiting"][1] == 0:
                        flag += "  queue empty at the end mark"
                    if row["offered"] < AHEAD * row["rate"]:
                        flag += "  generator barely ahead of the consumer"
                flag += "" if row["saturated"] in (None, True) else "  NOT SATURATED (no queue drops)"
                if abs(row["wall"] - args.seconds) > 0.2:
                    flag += f"  window {row['wall']:.2f} s"
                if "own" in row and abs(row["own"] - row["verdicts"]) > max(50, 0.01 * row["verdicts"]):
                    flag += f"  (own count {row['own']:,} differs from the kernel's {row['verdicts']:,})"
                print(f"{rep:>3} {config:<8} {verdicts:>11} {own:>9} {row['forwarded']:>9,.0f} "
                      f"{row['offered']:>9,.0f} {q:>9} {u:>7} {w:>10}  {cpu:>25} {row['steal']:>5.1%} "
                      f"{row['backlog_drops']:>7,}{flag}")
                sys.stdout.flush()
            rep += 1
        bench.inet_drop(False)
        bench.rule("none")

        blocks = 8 if args.connects >= 200 else 4
        per_block = max(1, args.connects // blocks)
        lat = bench.latency(blocks, per_block)
        completed = True
    except KeyboardInterrupt:
        if os.getpid() != main_pid:
            os._exit(1)   # Ctrl-C reached a fork of this process: leave the cleanup to the benchmark itself
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as e:
        if os.getpid() != main_pid:
            os._exit(1)
        print(f"\nbench_dataplane: {e}; cleaning up", file=sys.stderr)
        return 1
    finally:
        if os.getpid() != main_pid:
            os._exit(1)
        bench.down()
        for s, h in previous.items():
            signal.signal(s, h)
        from pyroute2 import netns
        left = [n for n in netns.listnetns() if n.startswith(f"{bench.tag}-")]
        if completed:
            shutil.rmtree(bench.log_dir, ignore_errors=True)
            logs = ""
        else:
            logs = f"; the children's stderr is kept in {bench.log_dir}"
        print(f"\ncleanup: namespaces of {bench.tag} left: {left or 'none'}{logs}")

    # ------------------------------------------------------------ summary
    print()
    print("summary: median over the clean windows of each configuration (saturated throughout, no other task above "
          f"{DISTURBED:.0%} of the consumer CPU); all windows if none is clean")
    med: dict[str, float] = {}
    per_cpu: dict[str, float] = {}
    names = {"worker": "worker (Judge)", "accept": "accept-all", "none": "no queue (forwarding)"}
    print(f"  {'config':<24} {'verdicts/s':>10} {'[min..max]':>17} {'clean':>6} {'per CPU-s':>10} {'fwd/s':>9} "
          f"{'offered/s':>9} {'queue drops':>12} {'saturated':>9}")
    for config in configs:
        rs = [r for r in rows if r["config"] == config]
        clean = [r for r in rs if is_clean(r)]
        use = clean or rs
        rates = [r["rate"] for r in use]
        med[config] = statistics.median(rates)
        if config == "none":
            pc, sat, drops, n_clean = "-", "-", "-", "-"
        else:
            per_cpu[config] = statistics.median(r["rate"] / r["cpu"] for r in rs if r["cpu"] > 0)
            pc = f"{per_cpu[config]:,.0f}"
            sat = f"{sum(1 for r in rs if r['saturated'])}/{len(rs)}"
            drops = f"{sum(r['queue_dropped'] + r['user_dropped'] for r in rs):,}"
            n_clean = f"{len(clean)}/{len(rs)}"
        span = f"[{min(rates):,.0f}..{max(rates):,.0f}]"
        print(f"  {names[config]:<24} {med[config]:>10,.0f} {span:>17} {n_clean:>6} {pc:>10} "
              f"{statistics.median(r['forwarded'] for r in use):>9,.0f} "
              f"{statistics.median(r['offered'] for r in use):>9,.0f} {drops:>12} {sat:>9}")
    print("  per CPU-s: verdicts per second of CPU time the consumer got (all windows): insensitive to other tasks "
          "taking the CPU away, not to what they do to the caches")
    ratio = med["worker"] / med["accept"]
    pairs, paired = [], []
    for i in sorted({r["rep"] for r in rows}):
        w = next((r for r in rows if r["rep"] == i and r["config"] == "worker"), None)
        a_ = next((r for r in rows if r["rep"] == i and r["config"] == "accept"), None)
        if w and a_:
            clean = is_clean(w) and is_clean(a_)
            pairs.append(f"{w['rate'] / a_['rate']:.3f}{'' if clean else '*'}")
            if clean:
                paired.append(w["rate"] / a_["rate"])
    print()
    clean_both = all(any(is_clean(r) for r in rows if r["config"] == c) for c in ("worker", "accept"))
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    if not clean_both:
        verdict += " (no clean window for one of them: the machine was busy, the number is unreliable)"
    print(f"  worker / accept-all        {ratio:.3f}   target >= {TARGET_RATIO:.2f}: {verdict}")
    print(f"      per repetition {', '.join(pairs)}" + (" (* a window of the pair was not clean)" if "*" in "".join(pairs)
                                                         else ""))
    if paired:
        print(f"      median of the clean pairs {statistics.median(paired):.3f}; per CPU-s "
              f"{per_cpu['worker'] / per_cpu['accept']:.3f}")
    print(f"  worker / no queue          {med['worker'] / med['none']:.3f}")
    print(f"  accept-all / no queue      {med['accept'] / med['none']:.3f}")
    none_rows = [r for r in rows if r["config"] == "none"]
    if all(r["forwarded"] >= 0.97 * r["offered"] for r in none_rows):
        print("      (with no queue the gateway forwarded all the generator sent: the no-queue rate is the "
              "generator's, a lower bound of the kernel's)")
    us_per = {c: 1e6 / med[c] for c in ("worker", "accept")}
    print(f"  per verdict: worker {us_per['worker']:.2f} us, accept-all {us_per['accept']:.2f} us of the consumer "
          f"CPU: the Judge costs {us_per['worker'] - us_per['accept']:.2f} us more per SYN")
    if lat is not None:
        print()
        print(f"  connect() latency at idle, us ({per_block} x {blocks} blocks alternating"
              f"{'; connector and worker SCHED_FIFO ' + str(args.fifo) if args.fifo else ''})")
        print(f"  {'config':<24} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>9} {'failures':>9}")
        for config in ("none", "worker"):
            us = lat["us"][config]
            print(f"  {names[config] if config != 'worker' else 'worker queue rule':<24} {len(us):>5} "
                  f"{percentile(us, 0.5):>8.1f} {percentile(us, 0.9):>8.1f} {percentile(us, 0.99):>8.1f} "
                  f"{max(us) if us else float('nan'):>9.1f} {lat['failures'][config]:>9}")
        w, n = lat["us"]["worker"], lat["us"]["none"]
        print(f"  added by the queue: p50 {percentile(w, 0.5) - percentile(n, 0.5):+.1f} us, p99 "
              f"{percentile(w, 0.99) - percentile(n, 0.99):+.1f} us")
        print(f"  CPU busy during those {lat['wall']:.1f} s (connector on CPU {bench.sender_cpu}, consumer on CPU "
              f"{bench.consumer_cpu}): " + ", ".join(f"CPU {c} {b:.0%}" for c, b in lat["busy"].items()) +
              "; much more than the connector's own share means other tasks were running")
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
