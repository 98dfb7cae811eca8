import pytest
import torch


@pytest.fixture(autouse=True)
def single_intra_op_thread():
    """These tests run thousands of tiny steps; intra-op threads only add synchronisation, and on
    a loaded 2-core machine they made a 500-step run ~17x slower (measured). Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
