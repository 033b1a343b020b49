import pytest
import torch

from geomlab.data import spiked
from geomlab.geometry import gd_tracking, spectral
from geomlab.models import two_layer


def test_checkpoints_cover_start_and_end():
    epochs = gd_tracking.checkpoint_epochs(1000, 8)
    assert {0, 1, 1000} <= epochs and len(epochs) <= 10


def _tiny_problem(seed=0, *, outer="rademacher", teacher="relu"):
    g = torch.Generator().manual_seed(seed)
    q, W0, a = spiked.draw_shared_init(
        d=12, k=15, outer_init=outer, generator=g, dtype=torch.float64
    )
    data = spiked.draw_teacher_data(
        q, teacher=teacher, n_train=10, n_test=8, nu=0.25, alpha=0.0, label_noise=0.5,
        generator=g,
    )  # fmt: skip
    return gd_tracking.spiked_problem(data, q=q, W0=W0, a=a, device=torch.device("cpu"))


def test_tracked_metrics_match_dense_recomputation():
    problem = _tiny_problem()
    options = gd_tracking.TrackingOptions(
        top_k=3, angle_rank=2, checkpoints=frozenset({0, 2, 3}), oversample=6, tol=1e-12,
        max_iter=500,
    )  # fmt: skip
    gamma, lr = 0.5, 0.3
    tracked = gd_tracking.train_and_track(
        problem, activation="sigmoid", gamma=gamma, scale=gamma, lr=lr, epochs=3,
        options=options, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert [row["epoch"] for row in tracked.rows] == [0, 1, 2, 3]
    W = problem.W0.clone()
    for row in tracked.rows:
        grad = two_layer.inner_weight_gradient_autograd(
            problem.x, problem.y, W, problem.a, activation="sigmoid", scale=gamma
        )
        f = two_layer.forward(problem.x, W, problem.a, activation="sigmoid", scale=gamma)
        f_test = two_layer.forward(problem.x_test, W, problem.a, activation="sigmoid", scale=gamma)
        ref = spectral.top_singular_triplets_reference(grad, 3)
        assert row["train_mse"] == pytest.approx(float(((f - problem.y) ** 2).mean()), rel=1e-12)
        assert row["test_mse"] == pytest.approx(float(((f_test - problem.y_test) ** 2).mean()))
        for i in range(3):
            assert row[f"grad_sv_{i + 1}"] == pytest.approx(float(ref.S[i]), rel=1e-8)
        residue = problem.bulk.T @ (problem.y - f)  # same weights as the gradient
        assert row["cos_v1_residue"] == pytest.approx(
            spectral.abs_cos(ref.V[:, 0], residue), abs=1e-6
        )
        assert row["cos_v1_spike"] == pytest.approx(
            spectral.abs_cos(ref.V[:, 0], problem.q), abs=1e-6
        )
        span = torch.linalg.qr(torch.stack([problem.x.T @ problem.y, problem.q], 1))[0]
        assert row["energy_fraction"] == pytest.approx(float((W @ span).norm() / W.norm()))
        assert row["w_spectral_norm"] == pytest.approx(
            spectral.spectral_norm_reference(W), rel=1e-6
        )
        assert row["sv_ratio_12"] == pytest.approx(float(ref.S[0] / ref.S[1]), rel=1e-8)
        W = two_layer.gradient_step(W, grad, lr=lr, gamma=gamma)
    assert set(tracked.weight_bases) == {0, 2, 3} and set(tracked.update_bases) == {2, 3}


def test_identical_runs_have_zero_angles_and_different_runs_do_not():
    problem = _tiny_problem(1)
    options = gd_tracking.TrackingOptions(
        top_k=3, angle_rank=2, checkpoints=frozenset({0, 2}), oversample=6, tol=1e-12,
        max_iter=500,
    )  # fmt: skip

    def track(activation):
        return gd_tracking.train_and_track(
            problem, activation=activation, gamma=1.0, scale=1.0, lr=0.5, epochs=2,
            options=options, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip

    same = gd_tracking.angles_between_runs(track("relu"), track("relu"))
    assert max(row["max_angle_deg"] for row in same) < 1e-3
    different = gd_tracking.angles_between_runs(track("relu"), track("sigmoid"))
    update_rows = [row for row in different if row["subspace"] == "update"]
    assert update_rows and update_rows[0]["max_angle_deg"] > 1.0
