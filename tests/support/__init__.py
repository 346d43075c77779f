"""Helpers only the tests use: paths, the in-process CLI runner, the namespace lab with test-only extras, the C
module's reference model."""
