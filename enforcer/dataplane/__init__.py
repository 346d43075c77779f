"""The data plane: kernel rules, the NFQUEUE workers and their packet callback, the daemon that supervises
them, its control socket, metrics and systemd integration."""
