"""The one marker of a refusal: geomlab will not return a number it cannot vouch for.

Every error that means "this model (or input) is outside what an exact path covers" derives
from :class:`Refused` as well as from its usual builtin (``ValueError``, ``TypeError``, ...):
an op without a Taylor rule, a failed self-check, an output that is not logits, non-finite
outputs, parameters K-FAC has no factors for. The command line maps it to exit status 2
(refused), not 3 (failed while working), and names what was refused.
"""

from __future__ import annotations

__all__ = ["Refused"]


class Refused(Exception):  # noqa: N818 - a marker mixed into the concrete error classes
    """Base of every refusal of a model or input by an exact-or-refused path."""
