import torch

from geomlab.geometry import linalg


def test_small_eigh_matches_torch_and_restores_thread_count():
    a = torch.randn(40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sym = a @ a.T
    threads = torch.get_num_threads()
    values, vectors = linalg.eigh(sym)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(sym), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, sym, rtol=1e-10,
                               atol=1e-9)  # fmt: skip
    torch.testing.assert_close(linalg.eigvalsh(sym), values, rtol=1e-12, atol=1e-10)
    assert torch.get_num_threads() == threads
