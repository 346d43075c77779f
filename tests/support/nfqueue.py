"""A real NFQUEUE served by a thread, for the tests that bind one in a throwaway namespace
(tests/integration/test_fastpath_queue.py, test_interface_rename.py: run there as scripts, they put tests/ on
sys.path first)."""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def served(queue_num: int, callback: Callable[[Any], None]) -> Iterator[None]:
    """netfilterqueue bound to `queue_num`, calling `callback` for each packet from a thread, until the block
    ends (then unbound)."""
    from netfilterqueue import NetfilterQueue

    nfq = NetfilterQueue()
    nfq.bind(queue_num, callback)
    stop = threading.Event()

    def serve() -> None:
        fd = nfq.get_fd()
        while not stop.is_set():
            if select.select([fd], [], [], 0.05)[0]:
                nfq.run(block=False)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        nfq.unbind()
