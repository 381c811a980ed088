import pytest
import torch

from deepslim._threads import default_threads

# two intra-op threads, or one when the machine is oversubscribed (two threads per process ran ~10x slower than one
# while other processes held the 2 cores: a distillation fixture took 300 s instead of 25 s)
torch.set_num_threads(default_threads() or 2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
