"""The counts the Judge keeps, made cumulative: per (subscription, code, verdict word), across table swaps.

The Judge (`_fastpath.Judge`, C) counts hits per verdict of the table it judges with; a verdict is a number that
means something only in its own table (`core.verdicts.Verdicts`). At each swap the old table's counts are folded
here with what its verdicts said, off the packet path.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from ..core.policy import verdict_word
from ..core.verdicts import SPOOFED, UNKNOWN, Verdict
from ._fastpath import SPOOFED as SPOOFED_VERDICT, UNKNOWN as UNKNOWN_VERDICT, Judge, View


def verdict_of(verdicts: list[Verdict], verdict: int) -> Verdict:
    """What a verdict a Judge gave says (its two that are not a table's included)."""
    if verdict == UNKNOWN_VERDICT:
        return UNKNOWN
    if verdict == SPOOFED_VERDICT:
        return SPOOFED
    return verdicts[verdict] if 0 <= verdict < len(verdicts) else UNKNOWN


CounterKey = tuple[str, str, str]  # subscription, code, verdict word


def fold(counts: list[int], verdicts: list[Verdict], into: collections.Counter[CounterKey]) -> None:
    for verdict, n in enumerate(counts):
        if n:
            said = verdict_of(verdicts, verdict)
            into[(said.subscription or "-", said.code, verdict_word(said.allow))] += n


class Counters:
    """Cumulative counts per (subscription, code, verdict word) across table swaps. The Judge counts per verdict
    of the table it judges with; at a swap those counts are folded here with what the verdicts said."""

    def __init__(self, judge: Judge, verdicts: list[Verdict]):
        self.judge, self.verdicts = judge, verdicts
        self.retired: collections.Counter[CounterKey] = collections.Counter()
        self.lock = threading.Lock()

    def swap(self, view: View, verdicts: list[Verdict]) -> None:
        """Judge with `view` from the next packet on (the swap is atomic: no packet lands between its steps)."""
        with self.lock:
            old, old_verdicts = self.judge.swap(view), self.verdicts
            self.verdicts = verdicts
            fold(old, old_verdicts, self.retired)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            total = collections.Counter(self.retired)
            fold(self.judge.counts(), self.verdicts, total)
        j = self.judge
        for said, n in ((UNKNOWN, j.unknown), (SPOOFED, j.spoofed)):
            if n:
                total[("-", said.code, verdict_word(False))] += n
        return {"by": [[s, c, v, n] for (s, c, v), n in sorted(total.items())],
                "malformed": j.malformed, "errors": j.errors}
