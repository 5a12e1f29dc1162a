"""Fixtures of the CMCS hypergradient tests."""

import pytest
import torch


@pytest.fixture
def float64():
    """Exactness and finite-difference checks in float64 (the oracle differences two dev losses ~1e-5
    apart), the default dtype restored afterwards (other tests' models are float32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
