"""The lab: a topology of network namespaces built from a lab file, the namespace lab with its SMTP ends and
the daemon, `enforcer lab up|down|status|exec`, the demo, and the probe. Nothing here is imported by a plain CLI
command: pyroute2 and scapy load only when a lab command runs."""
