"""Helpers shared by the unit and integration tests: paths, capability probes, real servers on loopback."""
