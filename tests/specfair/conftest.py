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


@pytest.fixture(autouse=True, scope="session")
def private_gguf_cache(tmp_path_factory):
    """Every GGUF file a test loads is cached under a temporary directory, never in the
    user's ~/.cache (subprocesses inherit SPECFAIR_CACHE)."""
    import os

    root = tmp_path_factory.mktemp("specfair-cache")
    before = os.environ.get("SPECFAIR_CACHE")
    os.environ["SPECFAIR_CACHE"] = str(root)
    yield root
    if before is None:
        os.environ.pop("SPECFAIR_CACHE", None)
    else:
        os.environ["SPECFAIR_CACHE"] = before
