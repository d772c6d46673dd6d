"""Shared fixture: run a test module's tiny models on one torch thread (much faster, above all on a busy
machine: two threads of a tiny conv can spin-wait for each other). Import it into a test module:

    from tests.single_thread import one_thread  # noqa: F401  (autouse)
"""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
