"""The data-parallel verbs default like the one-process ones (seed, learning rate, schedule, ...): a run moved to
several processes with the defaults is the same run (threads aside: one intra-op thread per rank)."""

import inspect

import pytest

from deepslim.train import distill, fit
from deepslim.train.distributed import distill_ddp, fit_ddp


@pytest.mark.parametrize(("one", "ddp"), [(fit, fit_ddp), (distill, distill_ddp)], ids=["fit", "distill"])
def test_the_data_parallel_verbs_share_the_one_process_defaults(one, ddp):
    a, b = inspect.signature(one).parameters, inspect.signature(ddp).parameters
    shared = [k for k in a if k in b and a[k].default is not inspect.Parameter.empty and k != "threads"]
    assert {"seed", "lr", "cosine", "restore_best", "weight_decay", "momentum", "optimizer"} <= set(shared)
    assert {k: b[k].default for k in shared} == {k: a[k].default for k in shared}
    assert b["threads"].default == 1 and b["seed"].default == 0
