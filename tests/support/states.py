"""State files for tests: the example lab, and more VMs beside it, written through the store (the benchmarks'
builder, benchmarks/states.py)."""

from benchmarks.states import TODAY, lab_state

__all__ = ["TODAY", "lab_state"]
