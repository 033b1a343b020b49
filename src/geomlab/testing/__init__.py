"""Helpers for testing geomlab's paths on models it did not write (random networks for
differential fuzzing: :mod:`geomlab.testing.netgen`). Not imported by the library itself."""
