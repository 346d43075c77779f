"""The project's benchmarks, run as modules from the repository root (reports, not tests):

    python -m benchmarks.table [--quick]       the compiled verdict table at 1,000 / 100,000 / 1,000,000 VMs
    python -m benchmarks.dataplane [--quick]   SYN verdicts/s at the NFQUEUE and the connect() latency it adds
                                               (as root; builds and removes its own network namespaces)

fleet.py is the synthetic inventory both register. The data-plane benchmark is split by concern: dataplane.py
(options, orchestration), lab.py (the namespaces, the children, one measurement window), child.py (the parent's
end of a child), roles.py (the children: `python -m benchmarks.roles ROLE ...`), senders.py (the SYN generator),
kernel.py (counters read from /proc), report.py (accounting, the clean-window test, percentiles, printing),
params.py (its fixed parameters).
"""
