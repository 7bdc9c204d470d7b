"""Fixtures of the specfair layer's tests (the helpers themselves are in tests/support)."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and a busy machine makes two spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
