"""A trainable parameter the outputs never use has zero Fisher rows and columns: the operator
gives exactly that (curvlinops' vmapped products crashed on it), and its probe leaves buffers
such as BatchNorm's running statistics alone."""

import torch
from torch import nn

from geomlab.geometry import curvature


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    model.register_parameter("unused", nn.Parameter(torch.randn(2)))  # first in the flat order
    return model.double()


def test_unused_parameters_get_zero_rows_and_the_rest_is_exact():
    model = _model().eval()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    fisher = curvature.FisherOperator(model, (x, y), loss="cross_entropy", batch_size=4)
    reference = curvature.dense_fisher_reference(model, (x, y), loss="cross_entropy")
    assert torch.equal(reference[:2], torch.zeros_like(reference[:2]))  # the unused rows
    generator = torch.Generator().manual_seed(1)
    size = fisher.shape[0]
    for columns in ((size,), (size, 3)):
        v = torch.randn(*columns, dtype=torch.float64, generator=generator)
        product = fisher @ v
        torch.testing.assert_close(product, reference @ v, rtol=1e-12, atol=1e-14)
        assert torch.equal(product[:2], torch.zeros_like(product[:2]))


def test_the_operators_probe_leaves_running_statistics_alone():
    model = _model().train()
    before = [b.clone() for b in model.buffers()]
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    curvature.FisherOperator(model, (x, y), loss="cross_entropy", self_check=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
