"""math_attention: forward-mode AD and double backward through PyTorch's own transformer, with the
caller's settings restored; as_logits: tensors and Hugging Face-style outputs, nothing else."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.outputs import ModelOutputError, TensorOutput, as_logits


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).double().eval()


def test_forward_mode_through_transformer_encoder_needs_math_attention():
    enc = _encoder()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    v = torch.randn_like(x)
    with pytest.raises((NotImplementedError, RuntimeError)):
        torch.func.jvp(enc, (x,), (v,))
    with math_attention():
        out, tangent = torch.func.jvp(enc, (x,), (v,))
    # The same function: central difference of the primal.
    h = 1e-6
    fd = (enc(x + h * v) - enc(x - h * v)) / (2 * h)
    torch.testing.assert_close(tangent, fd, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(out, enc(x))


def test_math_attention_restores_settings_even_on_error():
    assert torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(ValueError), math_attention():
        assert not torch.backends.mha.get_fastpath_enabled()
        raise ValueError("boom")
    assert torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with math_attention():
            pass
        assert not torch.backends.mha.get_fastpath_enabled()
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


@dataclass
class _Output:
    logits: torch.Tensor


def test_as_logits_accepts_tensors_and_logits_carriers_only():
    t = torch.ones(2, 3)
    assert as_logits(t) is t
    assert as_logits(_Output(t)) is t
    assert as_logits({"logits": t}) is t
    with pytest.raises(ModelOutputError, match="tuple"):
        as_logits((t, t))
    with pytest.raises(ModelOutputError, match="_Output"):
        as_logits(_Output(None))


def test_tensor_output_shares_parameters():
    inner = nn.Linear(3, 2)

    class HF(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return _Output(self.inner(x))

    wrapped = TensorOutput(HF())
    x = torch.randn(4, 3)
    torch.testing.assert_close(wrapped(x), inner(x))
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in inner.parameters()}
