"""The project's benchmarks, run as modules from the repository root (reports, not tests):

    python -m benchmarks.table [--quick]       the C verdict table at 1,000 / 100,000 / 1,000,000 VMs
    python -m benchmarks.names                 what re-reading a bound source's interface name costs the Judge
    python -m benchmarks.dataplane [--quick]   SYN verdicts/s at the NFQUEUE and the connect() latency it adds
                                               (as root; builds and removes its own network namespaces)
    python -m benchmarks.control               CLI latency at 1k/100k/1M VMs, commit-to-verdict under SYN load
    python -m benchmarks.soak                  the data plane under a steady SYN stream, a policy change a second
    python -m benchmarks.cycles                kill and restart cycles: nothing gets through while the daemon is down
    python -m benchmarks.hostile               a spoofed-source flood while the policy changes every second
    python -m benchmarks.etcd_fleet            three gateways following one etcd, beside SQLite and one gateway
    python -m benchmarks.startup               how fast a plain command starts, as a whole process
    python -m benchmarks.apply                 how `enforcer apply` grows with the inventory file

dataplane, soak, cycles, hostile, etcd_fleet and control's reload part run as root and build (and remove) their own
network namespaces; --help tells each one's options.

fleet.py is the synthetic inventory both register. The data-plane benchmark is split by concern: dataplane.py
(options, orchestration), lab.py (the namespaces, the children, one measurement window), child.py (the parent's
end of a child), roles.py (the children: `python -m benchmarks.roles ROLE ...`), senders.py (the SYN generator),
kernel.py (counters read from /proc), report.py (accounting, the clean-window test, percentiles, printing),
params.py (its fixed parameters). etcd_fleet.py's children (an operator in etcd's namespace, probers in the labs'
VMs) are etcd_roles.py.
"""
