"""The data-plane benchmark's fixed parameters, shared by the parent (dataplane, lab, report) and its children
(roles)."""

from __future__ import annotations

from enforcer.state.settings import QueueFull, Settings

VMS = 100_000          # registered VMs of the table the worker judges with (the synthetic fleet)
SEED = 25
INTERNET4 = "198.19.252.25"   # inside the fleet's reserved 198.19.240.0/20, in no scale set, not an appliance
PORT = 25
FLOWS = 16_384         # distinct source ports of the generator's SYNs
TAG_PREFIX = "p25b"    # the namespaces: p25b<6 hex digits>-gw, -inet, -0

# the queue as the daemon binds it: its defaults (queue number, length, socket buffer, queue-full policy)
DAEMON = Settings()
QUEUE_WORKER, QUEUE_ACCEPT, QUEUE_BOUND, QUEUE_MULTI = (DAEMON.queue + i for i in range(4))  # MULTI: --queues
MULTI_SOURCES = 16     # the generator's sources in the --queues configuration: the kernel balances by address
QUEUE_LENGTH, SOCKET_BUFFER = DAEMON.queue_length, DAEMON.socket_buffer
FAIL_OPEN = DAEMON.queue_full == QueueFull.ACCEPT

TARGET_RATIO = 0.95   # worker / accept-all (issue 11: over a table of a million VMs)
TARGET_CACHED = 0.80  # kernel cache / no queue (issue 11, --kernel-cache)
TARGET_MULTI = 1.6    # --queues 2 / one queue (issue 11)
NO_CONSUMER = ("cached", "none")  # configurations judged in the kernel alone: counted by what the gateway forwards
DISTURBED = 0.05      # a window where other tasks took more than this share of the consumer CPU
AHEAD = 1.05          # a clean window: the generator offered at least this many times the verdict rate
WARMUP = 0.5          # seconds of sending before a window opens (the queue fills, caches warm)
TAIL = 5.0            # the sender's own deadline lies this far past the window's end (it is stopped at the end)
CHILD_TIMEOUT = 60.0  # any answer from a child, at most
