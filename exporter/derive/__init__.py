"""Derivations: pure functions of samples and specs."""
