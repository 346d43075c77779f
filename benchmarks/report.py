"""The data-plane benchmark's accounting and report: a window's row from the counters read at its start and end
(verdicts from the kernel's queue counters, CPU shares from clock ticks), the clean-window test, percentiles,
and the printed lines: one per window, the summary, the latency table."""

from __future__ import annotations

import statistics
from typing import Any

from .kernel import clock_ticks
from .params import AHEAD, DISTURBED, NO_CONSUMER, TARGET_CACHED, TARGET_MULTI, TARGET_RATIO

NAMES = {"worker": "worker (Judge)", "bound": "worker, bound source", "accept": "accept-all",
         "multi": "worker, --queues", "cached": "kernel cache, in the set", "none": "no queue (forwarding)"}
SHORT = {"worker": "worker", "bound": "worker-bound", "accept": "accept-all", "multi": "worker --queues",
         "cached": "kernel cache", "none": "no queue"}


# ---------------------------------------------------------------- accounting


def window_row(config: str, m0: dict, m1: dict, ncpus: int, idle_limit: float) -> dict:
    """What one window measured, from the marks taken at its start and its end (see Lab.mark). Rates are per
    second of the parent's wall time, except the verdict rate: per second of the consumer's, between its reads
    of the queue counters."""
    ticks, wall = clock_ticks(), m1["t"] - m0["t"]
    row: dict[str, Any] = {
        "config": config, "wall": wall,
        "steal": (m1["steal"] - m0["steal"]) / ticks / wall / max(1, ncpus),
        "offered": (m1["vm_tx"] - m0["vm_tx"]) / wall,
        "forwarded": (m1["fwd"] - m0["fwd"]) / wall, "fwd_count": m1["fwd"] - m0["fwd"],
        "backlog_drops": m1["softnet"] - m0["softnet"]}
    if m0["c"] is None:
        row.update(rate=row["forwarded"], saturated=None)
        return row
    row.update(queue_counts(m0["c"], m1["c"]))
    row.update(cpu_shares(m0, m1, ticks, wall))
    row["idle_limit"] = idle_limit
    row["saturated"] = row["queue_dropped"] + row["user_dropped"] > 0
    return row


def queue_counts(c0: dict, c1: dict) -> dict:
    """Verdicts given in the window: messages the kernel handed to the socket, minus the ones it could not
    (socket buffer full), minus the change in packets still waiting for a verdict; and the drops."""
    q0, q1 = c0["q"], c1["q"]
    cwall = c1["t"] - c0["t"]
    user_dropped = q1["user_dropped"] - q0["user_dropped"]
    verdicts = (q1["id_sequence"] - q0["id_sequence"]) - user_dropped - (q1["waiting"] - q0["waiting"])
    out = {"verdicts": verdicts, "rate": verdicts / cwall, "cwall": cwall, "user_dropped": user_dropped,
           "queue_dropped": q1["queue_dropped"] - q0["queue_dropped"], "waiting": (q0["waiting"], q1["waiting"])}
    if c0["own"] is not None:
        out["own"] = c1["own"] - c0["own"]
    if c0.get("allowed") is not None:
        out["allowed"] = c1["allowed"] - c0["allowed"]
        out["spoofed"] = c1["spoofed"] - c0["spoofed"]
    return out


def cpu_shares(m0: dict, m1: dict, ticks: int, wall: float) -> dict:
    """The consumer's CPU time, and its CPU's time by kind: softirq, idle, and tasks other than the consumer
    (disturbance); each as a share of the window."""
    own = m1["cpu"] - m0["cpu"]
    c0, c1 = m0["ccpu"], m1["ccpu"]
    return {"cpu": own / ticks / wall,
            "sirq": (c1["irq"] - c0["irq"]) / ticks / wall,
            "idle": (c1["idle"] - c0["idle"]) / ticks / wall,
            "other": max(0.0, (c1["task"] - c0["task"]) - own) / ticks / wall}


def is_clean(row: dict) -> bool:
    """A queue window where the consumer had its CPU to itself and always had packets waiting: no other task
    above DISTURBED of its CPU, not idle beyond what SCHED_FIFO throttling leaves (sched_rt_runtime_us), packets
    dropped because the queue was full, some still waiting when the window closed, and the generator ahead of the
    consumer by AHEAD over the window."""
    if row["config"] in NO_CONSUMER:
        return True
    if row["config"] == "multi":  # its consumers share the CPUs with the generator by design: no CPU criteria
        return row["saturated"] and row["waiting"][1] > 0 and row["offered"] >= AHEAD * row["rate"]
    return (row["other"] <= DISTURBED and row["idle"] <= row["idle_limit"] and row["saturated"]
            and row["waiting"][1] > 0 and row["offered"] >= AHEAD * row["rate"])


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def entry_text(entry: Any) -> str:
    """A table entry as a plain tuple: (allow, the subscription whose policy decided, code)."""
    allow, subscription, code = entry
    return repr((allow, subscription, str(code)))


# ---------------------------------------------------------------- one line per window


def print_window_header() -> None:
    print(f"{'rep':>3} {'config':<8} {'verdicts/s':>11} {'own/s':>9} {'fwd/s':>9} {'offered/s':>9} "
          f"{'q-drops':>9} {'u-drops':>7} {'waiting':>10}  {'cpu: task sirq other idle':>25} {'steal':>5} "
          f"{'backlog':>7}")


def window_flags(row: dict, seconds: float) -> str:
    """Why a window may not be clean, and where the counts disagree."""
    flag = ""
    if row["config"] not in NO_CONSUMER:
        if row["other"] > DISTURBED and row["config"] != "multi":
            flag += "  disturbed: other tasks on the consumer CPU"
        if row["idle"] > row["idle_limit"]:
            flag += "  consumer CPU idle: not saturated all the time"
        if row["waiting"][1] == 0:
            flag += "  queue empty at the end mark"
        if row["offered"] < AHEAD * row["rate"]:
            flag += "  generator barely ahead of the consumer"
    flag += "" if row["saturated"] in (None, True) else "  NOT SATURATED (no queue drops)"
    if abs(row["wall"] - seconds) > 0.2:
        flag += f"  window {row['wall']:.2f} s"
    if "own" in row and abs(row["own"] - row["verdicts"]) > max(50, 0.01 * row["verdicts"]):
        flag += f"  (own count {row['own']:,} differs from the kernel's {row['verdicts']:,})"
    if "allowed" in row and not accepted_all(row):
        flag += f"  NOT ALL ACCEPTED: {row['allowed']:,} allowed, {row['spoofed']:,} spoofed-source"
    return flag


def accepted_all(row: dict) -> bool:
    """Whether the worker accepted the window's SYNs, by its own count: no spoofed-source drop, and as many
    allowed as the kernel counted verdicts (within what the marks' few microseconds apart let through)."""
    return row["spoofed"] == 0 and abs(row["allowed"] - row["verdicts"]) <= max(50, 0.01 * row["verdicts"])


def print_window(row: dict, seconds: float) -> None:
    own = f"{row['own'] / row['cwall']:,.0f}" if "own" in row else "-"
    if row["config"] in NO_CONSUMER:
        verdicts = q = u = w = cpu = "-"
    else:
        verdicts = f"{row['rate']:,.0f}"
        q, u = f"{row['queue_dropped']:,}", f"{row['user_dropped']:,}"
        w = f"{row['waiting'][0]}->{row['waiting'][1]}"
        cpu = " ".join(f"{row[k]:>4.0%}" for k in ("cpu", "sirq", "other", "idle"))
    print(f"{row['rep']:>3} {row['config']:<8} {verdicts:>11} {own:>9} {row['forwarded']:>9,.0f} "
          f"{row['offered']:>9,.0f} {q:>9} {u:>7} {w:>10}  {cpu:>25} {row['steal']:>5.1%} "
          f"{row['backlog_drops']:>7,}{window_flags(row, seconds)}")


# ---------------------------------------------------------------- the summary


def print_throughput(rows: list[dict], configs: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """The table of the configurations; returns the median rate and the median rate per CPU-second of each."""
    print("summary: median over the clean windows of each configuration (saturated throughout, no other task above "
          f"{DISTURBED:.0%} of the consumer CPU); all windows if none is clean")
    med: dict[str, float] = {}
    per_cpu: dict[str, float] = {}
    print(f"  {'config':<24} {'verdicts/s':>10} {'[min..max]':>17} {'clean':>6} {'per CPU-s':>10} {'fwd/s':>9} "
          f"{'offered/s':>9} {'queue drops':>12} {'saturated':>9}")
    for config in configs:
        rs = [r for r in rows if r["config"] == config]
        clean = [r for r in rs if is_clean(r)]
        use = clean or rs
        rates = [r["rate"] for r in use]
        med[config] = statistics.median(rates)
        if config in NO_CONSUMER:
            pc, sat, drops, n_clean = "-", "-", "-", "-"
        else:
            per_cpu[config] = statistics.median(r["rate"] / r["cpu"] for r in rs if r["cpu"] > 0)
            pc = f"{per_cpu[config]:,.0f}"
            sat = f"{sum(1 for r in rs if r['saturated'])}/{len(rs)}"
            drops = f"{sum(r['queue_dropped'] + r['user_dropped'] for r in rs):,}"
            n_clean = f"{len(clean)}/{len(rs)}"
        span = f"[{min(rates):,.0f}..{max(rates):,.0f}]"
        print(f"  {NAMES[config]:<24} {med[config]:>10,.0f} {span:>17} {n_clean:>6} {pc:>10} "
              f"{statistics.median(r['forwarded'] for r in use):>9,.0f} "
              f"{statistics.median(r['offered'] for r in use):>9,.0f} {drops:>12} {sat:>9}")
    print("  per CPU-s: verdicts per second of CPU time the consumer got (all windows): insensitive to other tasks "
          "taking the CPU away, not to what they do to the caches")
    return med, per_cpu


def paired_ratios(rows: list[dict], num: str = "worker", den: str = "accept") -> tuple[list[str], list[float]]:
    """num / den per repetition (as text, * when a window of the pair was not clean), and the clean pairs'
    ratios."""
    pairs, paired = [], []
    for i in sorted({r["rep"] for r in rows}):
        w = next((r for r in rows if r["rep"] == i and r["config"] == num), None)
        a = next((r for r in rows if r["rep"] == i and r["config"] == den), None)
        if w and a:
            clean = is_clean(w) and is_clean(a)
            pairs.append(f"{w['rate'] / a['rate']:.3f}{'' if clean else '*'}")
            if clean:
                paired.append(w["rate"] / a["rate"])
    return pairs, paired


def print_ratios(rows: list[dict], med: dict[str, float], per_cpu: dict[str, float]) -> None:
    ratio = med["worker"] / med["accept"]
    pairs, paired = paired_ratios(rows)
    print()
    clean_both = all(any(is_clean(r) for r in rows if r["config"] == c) for c in ("worker", "accept"))
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    if not clean_both:
        verdict += " (no clean window for one of them: the machine was busy, the number is unreliable)"
    print(f"  worker / accept-all        {ratio:.3f}   target >= {TARGET_RATIO:.2f}: {verdict}")
    starred = " (* a window of the pair was not clean)" if "*" in "".join(pairs) else ""
    print(f"      per repetition {', '.join(pairs)}{starred}")
    if paired:
        print(f"      median of the clean pairs {statistics.median(paired):.3f}; per CPU-s "
              f"{per_cpu['worker'] / per_cpu['accept']:.3f}")
    if "bound" in med:
        print_pair(rows, med, per_cpu, "bound", "worker")
        print_pair(rows, med, per_cpu, "bound", "accept")
    print(f"  worker / no queue          {med['worker'] / med['none']:.3f}")
    print(f"  accept-all / no queue      {med['accept'] / med['none']:.3f}")
    if "multi" in med:
        multi = med["multi"] / med["worker"]
        print(f"  worker --queues / worker   {multi:.3f}   target >= {TARGET_MULTI:.2f}: "
              f"{'PASS' if multi >= TARGET_MULTI else 'FAIL'} (its consumers at normal priority, one per CPU; "
              "the generator needs a CPU too)")
        if not any(r["saturated"] for r in rows if r["config"] == "multi"):
            print("      (no --queues window saturated: the workers took all the generator offered, so the figure is "
                  "the generator's, a lower bound of theirs)")
    if "cached" in med:
        cached = med["cached"] / med["none"]
        print(f"  kernel cache / no queue    {cached:.3f}   target >= {TARGET_CACHED:.2f}: "
              f"{'PASS' if cached >= TARGET_CACHED else 'FAIL'}")
    none_rows = [r for r in rows if r["config"] == "none"]
    if all(r["forwarded"] >= 0.97 * r["offered"] for r in none_rows):
        print("      (with no queue the gateway forwarded all the generator sent: the no-queue rate is the "
              "generator's, a lower bound of the kernel's)")
    us_per = {c: 1e6 / med[c] for c in ("worker", "accept")}
    print(f"  per verdict: worker {us_per['worker']:.2f} us, accept-all {us_per['accept']:.2f} us of the consumer "
          f"CPU: the Judge costs {us_per['worker'] - us_per['accept']:.2f} us more per SYN")
    if "bound" in med:
        print_binding_cost(med, per_cpu)


def print_pair(rows: list[dict], med: dict[str, float], per_cpu: dict[str, float], num: str, den: str) -> None:
    """The ratio of two queue configurations' medians, per repetition, and of their clean pairs."""
    pairs, paired = paired_ratios(rows, num, den)
    starred = " (* a window of the pair was not clean)" if "*" in "".join(pairs) else ""
    print(f"  {SHORT[num] + ' / ' + SHORT[den]:<26} {med[num] / med[den]:.3f}")
    print(f"      per repetition {', '.join(pairs)}{starred}")
    clean = f"median of the clean pairs {statistics.median(paired):.3f}; " if paired else ""
    print(f"      {clean}per CPU-s {per_cpu[num] / per_cpu[den]:.3f}")


def print_binding_cost(med: dict[str, float], per_cpu: dict[str, float]) -> None:
    """Microseconds per verdict of the three consumers, from the median rates and from the rates per CPU-s."""
    configs = ("worker", "bound", "accept")
    wall = {c: 1e6 / med[c] for c in configs}
    cpu = {c: 1e6 / per_cpu[c] for c in configs}
    print(f"  per verdict: worker-bound {wall['bound']:.2f} us of the consumer CPU ({cpu['bound']:.2f} us per "
          f"CPU-s; worker {cpu['worker']:.2f}, accept-all {cpu['accept']:.2f}): the binding check costs "
          f"{wall['bound'] - wall['worker']:+.2f} us per SYN ({cpu['bound'] - cpu['worker']:+.2f} per CPU-s)")


def print_binding_check(rows: list[dict]) -> bool:
    """Whether the bound source's SYNs were accepted in every window of the bound worker (a spoofed-source drop
    would make it measure drops): its own counts against the kernel's, and what the gateway forwarded."""
    bound = [r for r in rows if r["config"] == "bound"]
    if not bound:
        return True
    kernel, allowed = sum(r["verdicts"] for r in bound), sum(r["allowed"] for r in bound)
    spoofed, fwd = sum(r["spoofed"] for r in bound), sum(r["fwd_count"] for r in bound)
    ok = all(accepted_all(r) for r in bound)
    print(f"  bound source accepted: {'yes' if ok else 'NO'}: in its {len(bound)} windows the kernel counted "
          f"{kernel:,} verdicts, the callback allowed {allowed:,} ({spoofed:,} spoofed-source drops) and the "
          f"gateway forwarded {fwd:,}")
    return ok


def print_latency(lat: dict, fifo: int, sender_cpu: int, consumer_cpu: int) -> None:
    print()
    print(f"  connect() latency at idle, us ({lat['per_block']} x {lat['blocks']} blocks alternating"
          f"{'; connector and worker SCHED_FIFO ' + str(fifo) if fifo else ''})")
    print(f"  {'config':<24} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>9} {'failures':>9}")
    for config in ("none", "worker"):
        us = lat["us"][config]
        print(f"  {NAMES[config] if config != 'worker' else 'worker queue rule':<24} {len(us):>5} "
              f"{percentile(us, 0.5):>8.1f} {percentile(us, 0.9):>8.1f} {percentile(us, 0.99):>8.1f} "
              f"{max(us) if us else float('nan'):>9.1f} {lat['failures'][config]:>9}")
    w, n = lat["us"]["worker"], lat["us"]["none"]
    print(f"  added by the queue: p50 {percentile(w, 0.5) - percentile(n, 0.5):+.1f} us, p99 "
          f"{percentile(w, 0.99) - percentile(n, 0.99):+.1f} us")
    print(f"  CPU busy during those {lat['wall']:.1f} s (connector on CPU {sender_cpu}, consumer on CPU "
          f"{consumer_cpu}): " + ", ".join(f"CPU {c} {b:.0%}" for c, b in lat["busy"].items()) +
          "; much more than the connector's own share means other tasks were running")
