import math

import pytest
import torch

from geomlab.data.synthetic import gaussian_clusters
from geomlab.geometry import fisher as fo
from geomlab.models import softmax_regression as sr

SHAPES = [(50, 10, 16), (37, 3, 5), (200, 7, 2), (64, 2, 9), (5, 12, 4)]


def _case(n, c, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, dtype=torch.float64, generator=g)
    probs = torch.softmax(2 * torch.randn(n, c, dtype=torch.float64, generator=g), dim=1)
    return probs, inputs


@pytest.mark.parametrize(("n", "c", "d"), SHAPES)
def test_fast_fisher_matches_per_sample_reference(n, c, d):
    probs, inputs = _case(n, c, d, seed=n + c + d)
    fast = fo.softmax_fisher(probs, inputs)
    reference = fo.softmax_fisher_reference(probs, inputs)
    assert fast.shape == (c * d, c * d)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-13 * reference.abs().max())


def test_fisher_equals_expected_outer_product_of_score():
    # Independent oracle: F = E_x E_{y~p} [s s^T] with s = grad_W log p(y|x), via autograd.
    n, c, d = 6, 4, 3
    g = torch.Generator().manual_seed(7)
    inputs = torch.randn(n, d, dtype=torch.float64, generator=g)
    weight = torch.randn(c, d, dtype=torch.float64, generator=g)
    expected = torch.zeros(c * d, c * d, dtype=torch.float64)
    probs = torch.softmax(sr.logits(weight, inputs), dim=1)
    for i in range(n):
        for y in range(c):
            w = weight.clone().requires_grad_()
            logp = torch.log_softmax(sr.logits(w, inputs[i : i + 1]), dim=1)[0, y]
            (score,) = torch.autograd.grad(logp, w)
            s = score.reshape(-1)
            expected += probs[i, y] * torch.outer(s, s) / n
    torch.testing.assert_close(fo.softmax_fisher(probs, inputs), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("n", "c", "d"), [(300, 10, 16), (100, 3, 5)])
def test_fisher_is_symmetric_psd_with_softmax_null_space_of_dimension_d(n, c, d):
    probs, inputs = _case(n, c, d)
    fisher = fo.softmax_fisher(probs, inputs)
    assert torch.equal(fisher, fisher.T)
    eigenvalues = torch.linalg.eigvalsh(fisher)
    scale = eigenvalues.max()
    assert eigenvalues.min() >= -1e-12 * scale
    null = (eigenvalues.abs() < 1e-10 * scale).sum().item()
    assert null == d  # adding the same vector to every class row leaves softmax unchanged
    # ... and the null space is exactly those shifts: 1_C (x) e_k.
    shift = torch.kron(torch.ones(c, dtype=torch.float64), torch.eye(d, dtype=torch.float64)[0])
    assert (fisher @ shift).abs().max() < 1e-12 * scale


@pytest.mark.parametrize(("n", "c", "d"), SHAPES)
def test_fisher_vector_product_matches_dense(n, c, d):
    probs, inputs = _case(n, c, d, seed=3)
    v = torch.randn(c * d, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    dense = fo.softmax_fisher_reference(probs, inputs) @ v
    torch.testing.assert_close(fo.softmax_fisher_vector_product(probs, inputs, v), dense,
                               rtol=1e-12, atol=1e-14)  # fmt: skip


def test_pseudo_inverse_inverts_on_range_and_kills_null_space():
    probs, inputs = _case(400, 5, 4)
    fisher = fo.softmax_fisher(probs, inputs)
    pinv = fo.symmetric_pseudo_inverse(fisher, rcond=1e-8)
    assert pinv.rank == 5 * 4 - 4
    reference = torch.linalg.pinv(fisher, hermitian=True, rtol=1e-8)
    torch.testing.assert_close(pinv.matrix(), reference, rtol=1e-9, atol=1e-9)
    # Moore-Penrose identities
    p = pinv.matrix()
    torch.testing.assert_close(fisher @ p @ fisher, fisher, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p @ fisher @ p, p, rtol=1e-10, atol=1e-10)


def test_pseudo_inverse_rejects_negative_rcond():
    with pytest.raises(ValueError, match="rcond"):
        fo.symmetric_pseudo_inverse(torch.eye(3, dtype=torch.float64), rcond=-1.0)


def test_kl_matched_step_gives_second_order_kl_exactly_epsilon():
    probs, inputs = _case(120, 4, 6)
    fisher = fo.softmax_fisher(probs, inputs)
    direction = torch.randn(24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = torch.tensor([1e-6, 1e-3, 0.5], dtype=torch.float64)
    eta = fo.kl_matched_step_size(direction, fisher, eps)
    torch.testing.assert_close(fo.second_order_kl(direction, fisher, eta), eps, rtol=1e-14, atol=0)


def test_kl_matched_step_rejects_null_direction():
    fisher = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="curvature"):
        fo.kl_matched_step_size(torch.tensor([0.0, 1.0], dtype=torch.float64), fisher, 1e-3)


def test_categorical_kl_hand_case_and_stability():
    # KL([1/2,1/2] || [1/4,3/4]) = 1/2 ln 2 + 1/2 ln(2/3)
    p = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    q = torch.log(torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert fo.categorical_kl(p, q).item() == pytest.approx(expected, rel=1e-14)
    assert fo.categorical_kl(p, p).item() == 0.0
    # Extreme logits: finite, non-negative (no 1e-10 fudge needed).
    big = torch.tensor([[800.0, -800.0, 0.0]], dtype=torch.float64)
    value = fo.categorical_kl(big, big.flip(-1))
    assert torch.isfinite(value) and value > 0


def test_measured_kl_tends_to_target_as_epsilon_shrinks():
    inputs, labels = gaussian_clusters(n_samples=600, n_features=6, n_classes=4, seed=0)
    weight = sr.init_weights(4, 6, seed=0)
    _, gradient, probs = sr.loss_and_gradient(weight, inputs, labels)
    fisher = fo.softmax_fisher(probs, inputs)
    natural = fo.symmetric_pseudo_inverse(fisher, rcond=1e-8).apply(gradient)
    errors = []
    for direction in (gradient, natural):
        previous = math.inf
        for eps in (1e-2, 1e-4, 1e-6, 1e-8):
            eta = fo.kl_matched_step_size(direction, fisher, eps)
            after = weight - eta * direction.reshape(weight.shape)
            kl = fo.categorical_kl(sr.logits(weight, inputs), sr.logits(after, inputs)).item()
            error = abs(kl / eps - 1)
            assert error < previous  # monotone approach
            previous = error
        errors.append(previous)
    assert max(errors) < 1e-3  # third-order term ~ sqrt(eps)


def test_chunked_accumulation_matches_reference(monkeypatch):
    probs, inputs = _case(101, 4, 5, seed=2)
    monkeypatch.setattr(fo, "SAMPLE_CHUNK_ELEMENTS", 15 * 7)  # 7 samples per chunk, ragged end
    reference = fo.softmax_fisher_reference(probs, inputs)
    torch.testing.assert_close(fo.softmax_fisher(probs, inputs), reference, rtol=0,
                               atol=1e-13 * reference.abs().max())  # fmt: skip
