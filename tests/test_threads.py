import pytest
import torch

from geomlab.threads import limited_threads, threads_for_dense_size


def test_limited_threads_sets_and_restores_also_on_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with limited_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), limited_threads(target):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with limited_threads(None):
        assert torch.get_num_threads() == before


def test_limited_threads_rejects_zero():
    with pytest.raises(ValueError, match="n_threads"), limited_threads(0):
        pass


def test_edge_policy_single_thread_only_for_small_cpu_problems():
    assert threads_for_dense_size(160, "cpu") == 1
    assert threads_for_dense_size(10_000, "cpu") is None
    assert threads_for_dense_size(160, "meta") is None
