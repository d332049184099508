import pytest
import torch
from hypothesis import settings

settings.register_profile("lowbit", deadline=None, max_examples=60, derandomize=True)
settings.load_profile("lowbit")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
