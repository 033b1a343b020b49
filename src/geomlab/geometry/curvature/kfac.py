"""Which parameters curvlinops' K-FAC covers, checked before any work."""

from __future__ import annotations

from torch import nn

from geomlab.geometry.curvature.errors import UnsupportedShapeError
from geomlab.geometry.params import trainable_parameters

__all__ = ["check_kfac_eligible", "kfac_ineligible_parameters"]


def kfac_ineligible_parameters(model: nn.Module) -> list[str]:
    """Names of trainable parameters that are not a weight/bias of an ``nn.Linear`` or
    ``nn.Conv2d`` (K-FAC has no Kronecker factors for them: LayerNorm, BatchNorm, attention
    in-projections, embeddings, free ``nn.Parameter`` such as a CLS token). The ``out_proj``
    of an ``nn.MultiheadAttention`` counts as ineligible too: attention uses its weight
    directly, never calling it as a module, so K-FAC's hooks would never see its inputs."""
    inside_attention = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.MultiheadAttention)
        for p in m.parameters()
    }
    supported = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
        for p in m.parameters(recurse=False)
        if id(p) not in inside_attention
    }
    return [n for n, p in trainable_parameters(model).items() if id(p) not in supported]


def check_kfac_eligible(model: nn.Module, *, method: str = "kfac") -> None:
    """Raise :class:`UnsupportedShapeError` before any work when K-FAC cannot cover ``model``,
    naming the parameters and how to freeze them."""
    others = kfac_ineligible_parameters(model)
    if others:
        shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
        raise UnsupportedShapeError(
            f"{method}: K-FAC (curvlinops) covers parameters of nn.Linear and nn.Conv2d layers "
            "called as modules only (not attention's, norms', embeddings' or free ones); not "
            f"{shown}. Freeze them (param.requires_grad_(False), e.g. in your model factory) to "
            "take K-FAC steps on the remaining layers, or use natgrad with solver cg/dense"
        )
