"""The integration harness: enforcer.lab's NamespaceLab, plus helpers the tests need."""

from __future__ import annotations

import os
import sys
import time

from enforcer.lab import NamespaceLab as NetLab  # noqa: F401 - the tests' name for it

def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll until predicate() is truthy (bounded); returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def as_user(uid: int, function) -> tuple[int, str]:
    """Run function() in a forked child that has become `uid` (no exec: the interpreter may sit where that
    user cannot read); returns (its return value as exit status, what it printed)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.dup2(write, 1)
            os.dup2(write, 2)
            sys.stdout = sys.stderr = open(write, "w", closefd=False)  # past pytest's capture
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = function()
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            print(f"child failed: {e!r}", file=sys.stderr)
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0)
    os.close(write)
    with os.fdopen(read) as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output
