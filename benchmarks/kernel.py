"""What the kernel counts, read from /proc by the data-plane benchmark's parent: interface counters of a
namespace, backlog drops, CPU time per CPU and per process, the SCHED_FIFO throttle, the machine.

The NFQUEUE counters are not here: the consumer reads those in its own namespace with the project's
enforcer.dataplane.queue.kernel_queue_stats.
"""

from __future__ import annotations

import os
import platform
import sys


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


def clock_ticks() -> int:
    """Clock ticks per second, the unit of the counters above."""
    return os.sysconf("SC_CLK_TCK")


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
