import pytest
import torch

from geomlab.geometry import curvature as cv
from geomlab.geometry.gates import psd_tolerance
from geomlab.models import softmax_regression as sr
from geomlab.testing.cases import softmax_regression_case

SHAPES = [(50, 10, 16), (37, 3, 5), (200, 7, 2), (64, 2, 9), (5, 12, 4)]


@pytest.mark.parametrize(("n", "c", "d"), SHAPES)
def test_fast_fisher_matches_per_sample_reference(n, c, d):
    probs, inputs = softmax_regression_case(n, c, d, seed=n + c + d)
    fast = cv.softmax_regression_fisher(probs, inputs)
    reference = cv.softmax_regression_fisher_reference(probs, inputs)
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
    torch.testing.assert_close(
        cv.softmax_regression_fisher(probs, inputs), expected, rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize(("n", "c", "d"), [(300, 10, 16), (100, 3, 5)])
def test_fisher_is_symmetric_psd_with_softmax_null_space_of_dimension_d(n, c, d):
    probs, inputs = softmax_regression_case(n, c, d)
    fisher = cv.softmax_regression_fisher(probs, inputs)
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
    probs, inputs = softmax_regression_case(n, c, d, seed=3)
    v = torch.randn(c * d, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    dense = cv.softmax_regression_fisher_reference(probs, inputs) @ v
    fvp = cv.softmax_regression_fisher_vector_product(probs, inputs, v)
    torch.testing.assert_close(fvp, dense, rtol=1e-12, atol=1e-14)


def test_chunked_accumulation_matches_reference():
    probs, inputs = softmax_regression_case(101, 4, 5, seed=2)
    reference = cv.softmax_regression_fisher_reference(probs, inputs)
    chunked = cv.softmax_regression_fisher(probs, inputs, chunk_elements=15 * 7)  # 7 per chunk
    torch.testing.assert_close(chunked, reference, rtol=0,
                               atol=1e-13 * reference.abs().max())  # fmt: skip


def test_precomputed_index_gives_the_same_fisher_and_a_wrong_one_is_refused():
    probs, inputs = softmax_regression_case(40, 3, 5, seed=4)
    index = cv.softmax_regression_gather_index(3, 5)
    assert torch.equal(cv.softmax_regression_fisher(probs, inputs, index=index),
                       cv.softmax_regression_fisher(probs, inputs))  # fmt: skip
    with pytest.raises(cv.UnsupportedShapeError, match="index"):
        cv.softmax_regression_fisher(probs, inputs, index=cv.softmax_regression_gather_index(3, 4))


@pytest.mark.parametrize(
    ("probs_shape", "inputs_shape", "match"),
    [
        ((8, 10), (8, 1, 28, 28), "bias-free softmax regression"),  # image inputs of a CNN
        ((8, 3), (9, 4), "8 samples but inputs has 9"),
        ((8,), (8, 4), r"probs must be \(N, C\)"),
    ],
)
def test_fast_path_refuses_shapes_it_does_not_cover(probs_shape, inputs_shape, match):
    probs = torch.rand(*probs_shape, dtype=torch.float64)
    inputs = torch.rand(*inputs_shape, dtype=torch.float64)
    for fn in (cv.softmax_regression_fisher, cv.softmax_regression_fisher_reference):
        with pytest.raises(cv.UnsupportedShapeError, match=match):
            fn(probs, inputs)


def test_fisher_vector_product_refuses_a_vector_of_another_model():
    probs, inputs = softmax_regression_case(10, 3, 4)
    with pytest.raises(cv.UnsupportedShapeError, match=r"C\*D = 12"):
        cv.softmax_regression_fisher_vector_product(probs, inputs, torch.ones(13).double())


def test_psd_tolerance_scales_its_default_with_dtype_eps_and_keeps_explicit_values():
    assert psd_tolerance(None, dtype=torch.float64, size=160) == 1e-7
    assert psd_tolerance(None, dtype=torch.float32, size=160) == pytest.approx(
        160 * torch.finfo(torch.float32).eps
    )
    assert psd_tolerance(1e-300, dtype=torch.float32, size=160) == 1e-300


def test_softmax_regression_backend_is_the_same_operator():
    probs, x = softmax_regression_case(40, 3, 5)
    operator = cv.SoftmaxRegressionFisher(probs, x)
    dense = cv.softmax_regression_fisher(probs, x)
    assert operator.shape == dense.shape and operator.dtype == torch.float64
    v = torch.randn(15, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(operator @ v, dense @ v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(operator @ v[:, 0], dense @ v[:, 0], rtol=1e-12, atol=1e-14)
    assert torch.equal(operator.dense(), dense)
