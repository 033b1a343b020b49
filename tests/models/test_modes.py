import pytest
from torch import nn

from geomlab.models.modes import eval_mode, train_mode


def test_modes_are_restored_per_submodule_also_on_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    model.train()
    model[2].eval()  # a mixed state must survive
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[1].training and not model[2].training
    with pytest.raises(RuntimeError), train_mode(model):
        assert all(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert model.training and not model[2].training
