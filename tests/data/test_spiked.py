import pytest
import torch

from geomlab.data.spiked import (
    bulk_std,
    random_unit_vector,
    sample_spiked_gaussian,
    single_index_targets,
    spike_strength,
)


def test_spike_covariance_has_planted_eigenvalue():
    g = torch.Generator().manual_seed(0)
    d, n = 20, 40000
    q = random_unit_vector(d, generator=g, dtype=torch.float64)
    zeta = spike_strength(16, 0.5)  # 4.0
    sample = sample_spiked_gaussian(n, q=q, zeta=zeta, alpha=0.0, generator=g)
    cov = sample.x.T @ sample.x / n
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    assert float(eigenvalues[-1]) == pytest.approx(zeta**2 + 1, rel=0.03)
    assert abs(float(eigenvectors[:, -1] @ q)) > 0.999
    # The rest of the spectrum is the identity bulk.
    assert float(eigenvalues[:-1].max()) < 1.1 and float(eigenvalues[:-1].min()) > 0.9
    torch.testing.assert_close(sample.x, sample.bulk + zeta * sample.z[:, None] * q[None, :])


def test_bulk_covariance_follows_power_law():
    g = torch.Generator().manual_seed(1)
    q = random_unit_vector(4, generator=g, dtype=torch.float64)
    sample = sample_spiked_gaussian(50000, q=q, zeta=0.0, alpha=1.0, generator=g)
    variances = sample.bulk.var(dim=0)
    torch.testing.assert_close(
        variances, torch.tensor([1.0, 0.5, 1 / 3, 0.25], dtype=torch.float64), rtol=0.03, atol=0
    )
    torch.testing.assert_close(
        bulk_std(4, 1.0, dtype=torch.float64) ** 2,
        torch.tensor([1.0, 0.5, 1 / 3, 0.25], dtype=torch.float64),
    )


def test_single_index_targets_vectorized_matches_per_sample():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    beta = random_unit_vector(5, generator=g, dtype=torch.float64)
    clean = single_index_targets(x, beta, activation="relu", noise_std=0.0, generator=g)
    per_sample = torch.stack([torch.relu(row @ beta) for row in x])
    torch.testing.assert_close(clean, per_sample)
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    noisy = single_index_targets(x, beta, activation="sigmoid", noise_std=0.5, generator=g1)
    noise = torch.randn(30, generator=g2, dtype=torch.float64)
    torch.testing.assert_close(noisy, torch.sigmoid(x @ beta) + 0.5 * noise)


def test_bad_values_raise():
    with pytest.raises(ValueError, match="nu must be >= 0"):
        spike_strength(10, -0.1)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        bulk_std(3, -1.0)
    with pytest.raises(ValueError, match="unknown activation"):
        single_index_targets(torch.zeros(2, 2), torch.ones(2), activation="swish")
    with pytest.raises(ValueError, match="n must be > 0"):
        sample_spiked_gaussian(0, q=torch.ones(2), zeta=1.0)
