"""The `enforcer` command (click): main.py is the entry point and maps errors; one module per command group.
Nothing outside this package imports it: the lab and the demo change state through the store, not the CLI."""
