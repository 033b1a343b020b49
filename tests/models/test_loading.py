import pytest
import torch
from torch import nn

from geomlab.data.user import load_user_data
from geomlab.models.loading import (
    ImportPathError,
    build_user_model,
    is_import_path,
    resolve_import_path,
)


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))


def not_a_module():
    return 3


def four_samples():
    return torch.randn(4, 2), torch.tensor([0, 1, 0, 1])


def mismatched():
    return torch.randn(4, 2), torch.tensor([0, 1])


ME = __name__


def test_import_path_syntax():
    assert is_import_path("pkg.mod:fn")
    assert is_import_path("mod:Cls.factory")
    for bad in ("mlp", "pkg.mod", "pkg.mod:", ":fn", "pkg mod:fn", "pkg.mod:fn()"):
        assert not is_import_path(bad)


def test_resolve_errors_name_the_problem():
    with pytest.raises(ImportPathError, match="not an import path"):
        resolve_import_path("mlp")
    with pytest.raises(ImportPathError, match="cannot import module"):
        resolve_import_path("no_such_module_xyz:fn")
    with pytest.raises(ImportPathError, match="no attribute"):
        resolve_import_path("math:no_such_function")
    with pytest.raises(ImportPathError, match="not a callable"):
        resolve_import_path("math:pi")


def test_user_model_is_seeded_and_cast():
    a = build_user_model(f"{ME}:small_mlp", seed=3, dtype=torch.float64)
    b = build_user_model(f"{ME}:small_mlp", seed=3, dtype=torch.float64)
    c = build_user_model(f"{ME}:small_mlp", seed=4, dtype=torch.float64)
    torch.manual_seed(3)
    expected = small_mlp().double()
    for pa, pb, pe in zip(a.parameters(), b.parameters(), expected.parameters(), strict=True):
        assert pa.dtype == torch.float64
        assert torch.equal(pa, pb) and torch.equal(pa, pe)
    assert not torch.equal(a[0].weight, c[0].weight)
    with pytest.raises(ImportPathError, match="not a torch.nn.Module"):
        build_user_model(f"{ME}:not_a_module", seed=0)


def test_user_data_checks_shapes_and_takes_the_first_n():
    torch.manual_seed(0)
    inputs, labels = load_user_data(f"{ME}:four_samples", n_samples=3, dtype=torch.float64)
    assert inputs.shape == (3, 2) and inputs.dtype == torch.float64
    assert labels.tolist() == [0, 1, 0]
    with pytest.raises(ImportPathError, match="n_samples"):
        load_user_data(f"{ME}:four_samples", n_samples=5)
    with pytest.raises(ImportPathError, match="same first"):
        load_user_data(f"{ME}:mismatched")
    with pytest.raises(ImportPathError, match=r"\(inputs, labels\)"):
        load_user_data(f"{ME}:small_mlp")
