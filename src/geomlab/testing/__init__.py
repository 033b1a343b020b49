"""Helpers for testing geomlab's paths on models it did not write. Not imported by the library.

* :mod:`geomlab.testing.cases`: the shared case zoo (model factory, input shape, loss, mode)
  that every geometry path is tested on;
* :mod:`geomlab.testing.compare`: relative error in float64 and an assertion whose message says
  what differs;
* :mod:`geomlab.testing.netgen`: random networks for differential fuzzing.
"""
