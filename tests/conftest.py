import os

import pytest
import torch

from deepslim._threads import default_threads

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core: one intra-op thread each, and the same for the processes the tests
    # start (the CLI, torchrun, export workers), which inherit the environment
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
elif not os.environ.get("OMP_NUM_THREADS"):  # a thread count set in the environment (make mutation: 1) stands
    # two intra-op threads, or one when the machine is oversubscribed (two threads per process ran ~10x slower than
    # one while other processes held the 2 cores: a distillation fixture took 300 s instead of 25 s)
    torch.set_num_threads(default_threads() or 2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
