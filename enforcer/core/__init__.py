"""The pure core: profiles, the inventory and its lifecycle, the policy, the compiled table, convergence onto a
document. No I/O, and no imports outside itself but enforcer.errors (a unit test checks)."""
