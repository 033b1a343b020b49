import math

import pytest
import torch

from geomlab.geometry.spectral import (
    abs_cos,
    column_space_angle_bound_deg,
    energy_fraction_in_span,
    entropy_effective_rank,
    gradient_alignment_metrics,
    orthonormal_basis,
    principal_angle_summary_deg,
    principal_angles,
    residue_direction,
    singular_value_gap,
    spectral_norm_reference,
    stable_rank,
    subspace_alignment_cosines,
    top_singular_triplets,
    top_singular_triplets_reference,
)


def _low_rank_plus_noise(m, n, rank, noise, seed):
    g = torch.Generator().manual_seed(seed)
    left = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))[0]
    values = torch.linspace(10.0, 3.0, rank, dtype=torch.float64)
    noise_part = noise * torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    return (left * values) @ right.mT + noise_part


def _assert_matches_reference(A, k, fast):
    ref = top_singular_triplets_reference(A, k)
    torch.testing.assert_close(fast.S, ref.S, rtol=1e-8, atol=0.0)
    for i in range(k):
        assert abs_cos(fast.V[:, i], ref.V[:, i]) > 1 - 1e-8
        assert abs_cos(fast.U[:, i], ref.U[:, i]) > 1 - 1e-8
    # Columns are orthonormal and the triplets satisfy A v = σ u.
    eye = torch.eye(k, dtype=A.dtype)
    torch.testing.assert_close(fast.V.mT @ fast.V, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(fast.U.mT @ fast.U, eye, atol=1e-10, rtol=0)
    assert fast.max_residual < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_matches_full_svd_on_low_rank_plus_noise(seed):
    A = _low_rank_plus_noise(120, 90, rank=6, noise=0.5, seed=seed)
    g = torch.Generator().manual_seed(seed)
    fast = top_singular_triplets(A, 5, generator=g, tol=1e-13, max_iter=200)
    assert fast.converged
    _assert_matches_reference(A, 5, fast)


@pytest.mark.parametrize("shape", [(80, 60), (50, 70)])
def test_top_k_matches_full_svd_on_random_matrices(shape):
    g = torch.Generator().manual_seed(3)
    A = torch.randn(*shape, generator=g, dtype=torch.float64)
    # A Gaussian matrix has small gaps at the top; a bigger block and tight tolerance converge.
    fast = top_singular_triplets(A, 3, oversample=20, generator=g, tol=1e-15, max_iter=2000)
    _assert_matches_reference(A, 3, fast)


def test_warm_start_converges_in_fewer_iterations():
    A = _low_rank_plus_noise(100, 80, rank=4, noise=1.0, seed=5)
    g = torch.Generator().manual_seed(0)
    cold = top_singular_triplets(A, 4, generator=g, tol=1e-12)
    warm = top_singular_triplets(A, 4, generator=g, tol=1e-12, init=cold.V)
    assert warm.iterations < cold.iterations
    torch.testing.assert_close(warm.S, cold.S, rtol=1e-10, atol=0)


def test_top_k_rejects_bad_rank():
    with pytest.raises(ValueError, match="k must be in"):
        top_singular_triplets(torch.zeros(4, 3), 0)
    with pytest.raises(ValueError, match="k must be in"):
        top_singular_triplets_reference(torch.zeros(4, 3), 4)


def test_spectral_norm_reference_is_top_singular_value():
    A = _low_rank_plus_noise(30, 20, rank=2, noise=0.1, seed=1)
    assert spectral_norm_reference(A) == pytest.approx(10.0, rel=0.05)
    ref = top_singular_triplets_reference(A, 1)
    assert spectral_norm_reference(A) == pytest.approx(float(ref.S[0]), rel=1e-12)


def test_principal_angles_hand_case():
    # span(e1, e2) vs span(e1, cos t e2 + sin t e3): angles 0 and t.
    t = 0.3
    A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    B = torch.tensor([[1.0, 0.0], [0.0, math.cos(t)], [0.0, math.sin(t)]], dtype=torch.float64)
    angles = principal_angles(A, B)
    torch.testing.assert_close(
        angles, torch.tensor([0.0, t], dtype=torch.float64), atol=1e-7, rtol=0
    )
    cosines = subspace_alignment_cosines(A, B)
    torch.testing.assert_close(cosines, torch.tensor([1.0, math.cos(t)], dtype=torch.float64))


def test_column_space_angles_of_tall_matrices_are_bounded():
    # Two random 12×8 matrices: their 8-dim column spaces in R^12 share >= 4 dimensions.
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 8, generator=g, dtype=torch.float64)
    B = torch.randn(12, 8, generator=g, dtype=torch.float64)
    angles = principal_angles(A, B)
    assert int((angles < 1e-6).sum()) >= 4
    mean_deg = float(torch.rad2deg(angles).mean())
    assert mean_deg <= column_space_angle_bound_deg(12, 8) + 1e-9
    assert column_space_angle_bound_deg(1250, 1000) == pytest.approx(22.5)
    assert column_space_angle_bound_deg(1000, 10) == 90.0


def test_orthonormal_basis_drops_null_directions():
    v = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 0.0]], dtype=torch.float64)
    assert orthonormal_basis(v).shape == (3, 1)


def test_energy_fraction_in_span():
    W = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 5.0]], dtype=torch.float64)
    span = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    # ‖W P‖_F = 3, ‖W‖_F = sqrt(50).
    assert energy_fraction_in_span(W, span) == pytest.approx(3 / math.sqrt(50))
    full = torch.eye(3, dtype=torch.float64)
    assert energy_fraction_in_span(W, full) == pytest.approx(1.0)


def test_abs_cos_and_ranks():
    u = torch.tensor([1.0, 0.0])
    assert abs_cos(u, torch.tensor([-2.0, 0.0])) == pytest.approx(1.0)
    assert abs_cos(u, torch.zeros(2)) == 0.0
    assert stable_rank(2.0, 1.0) == pytest.approx(4.0)
    assert entropy_effective_rank(torch.ones(5)) == pytest.approx(5.0)
    assert entropy_effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_gradient_alignment_metrics_on_a_planted_rank_two_matrix():
    g = torch.Generator().manual_seed(0)
    residue = torch.randn(30, generator=g, dtype=torch.float64)
    spike = torch.randn(30, generator=g, dtype=torch.float64)
    spike /= spike.norm()
    left = torch.linalg.qr(torch.randn(40, 2, generator=g, dtype=torch.float64))[0]
    right = torch.stack([residue / residue.norm(), spike], 1)
    right = torch.linalg.qr(right)[0]
    gradient = 10 * left[:, :1] @ right[:, :1].T + 3 * left[:, 1:] @ right[:, 1:].T
    gradient += 1e-3 * torch.randn(40, 30, generator=g, dtype=torch.float64)
    top = top_singular_triplets(gradient, 4, generator=g, tol=1e-12)
    row = gradient_alignment_metrics(gradient, top, residue=residue, spike=spike, gaps=3)
    assert row["sv_ratio_12"] == pytest.approx(10 / 3, rel=1e-3)
    assert row["sv_ratio_23"] > 100
    assert row["cos_v1_residue"] == pytest.approx(1.0, abs=1e-4)
    assert row["top2_cos_2"] == pytest.approx(1.0, abs=1e-4)


def test_singular_value_gap_rule():
    assert singular_value_gap(6.0, 3.0) == 2.0
    assert singular_value_gap(2.0, 0.0) == math.inf  # exact rank deficiency: unbounded gap
    assert math.isnan(singular_value_gap(0.0, 0.0))  # no gap defined


def test_gradient_alignment_metrics_on_an_exact_rank_one_gradient():
    # G = 5 u vᵀ with v = the residue direction: σ2 = σ3 = 0. One rule for both experiments:
    # σ1/σ2 = inf, σ2/σ3 = NaN (no ZeroDivisionError), and σ3/σ4 NaN when σ4 is not computed.
    g = torch.Generator().manual_seed(1)
    residue = torch.randn(6, generator=g, dtype=torch.float64)
    spike = torch.randn(6, generator=g, dtype=torch.float64)
    u = torch.randn(5, generator=g, dtype=torch.float64)
    gradient = 5 * torch.outer(u / u.norm(), residue / residue.norm())
    top = top_singular_triplets_reference(gradient, 3)
    top = type(top)(top.U, top.S * torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), top.V,
                    0, True, 0.0)  # exact zeros (the SVD returns ~1e-16)  # fmt: skip
    row = gradient_alignment_metrics(gradient, top, residue=residue, spike=spike, gaps=3)
    assert row["grad_sv_1"] == pytest.approx(5.0)
    assert row["sv_ratio_12"] == math.inf
    assert math.isnan(row["sv_ratio_23"]) and math.isnan(row["sv_ratio_34"])
    assert row["stable_rank"] == pytest.approx(1.0)
    assert row["grad_fro_norm"] == pytest.approx(5.0)
    assert row["cos_v1_residue"] == pytest.approx(1.0)
    assert row["cos_v1_spike"] == pytest.approx(abs_cos(residue, spike))
    assert row["svd_converged"] == 1.0 and row["svd_iterations"] == 0.0
    with pytest.raises(ValueError, match="at least 2 singular triplets"):
        gradient_alignment_metrics(
            gradient, top_singular_triplets_reference(gradient, 1), residue=residue, spike=spike
        )


def test_gradient_alignment_metrics_match_a_dense_recomputation_in_float32():
    g = torch.Generator().manual_seed(2)
    gradient = torch.randn(9, 7, generator=g)
    residue, spike = torch.randn(7, generator=g), torch.randn(7, generator=g)
    ref = top_singular_triplets_reference(gradient.double(), 4)
    row = gradient_alignment_metrics(gradient, ref, residue=residue, spike=spike)
    assert set(row) >= {"sv_ratio_12", "sv_ratio_23"} and "sv_ratio_34" not in row
    S = torch.linalg.svdvals(gradient.double())
    assert row["sv_ratio_23"] == pytest.approx(float(S[1] / S[2]), rel=1e-12)
    assert row["stable_rank"] == pytest.approx(float((S**2).sum() / S[0] ** 2), rel=1e-6)
    expected = subspace_alignment_cosines(ref.V[:, :2], torch.stack([residue, spike], 1).double())
    assert [row["top2_cos_1"], row["top2_cos_2"]] == pytest.approx(expected.tolist())


def test_residue_direction_is_bulk_transpose_times_residual():
    bulk = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    f = torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64)
    # rows weighted by y − f = (0.5, −1, 1): (0.5 − 3 + 0, 1 − 4 + 1)
    torch.testing.assert_close(
        residue_direction(bulk, y, f), torch.tensor([-2.5, -2.0], dtype=torch.float64)
    )


def test_principal_angle_summary_in_degrees():
    t = 0.3
    A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    B = torch.tensor([[1.0, 0.0], [0.0, math.cos(t)], [0.0, math.sin(t)]], dtype=torch.float64)
    summary = principal_angle_summary_deg(A, B)
    assert summary["rank"] == 2
    assert summary["max_angle_deg"] == pytest.approx(math.degrees(t))
    assert summary["min_angle_deg"] == pytest.approx(0.0, abs=1e-5)
    assert summary["mean_angle_deg"] == pytest.approx(math.degrees(t) / 2, abs=1e-5)
