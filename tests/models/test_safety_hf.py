"""The ``.pt2`` verifier on Hugging Face text models: real operators such as ``aten.__and__`` load, others do not."""

from __future__ import annotations

import pytest
import torch

import deepslim as ds
from deepslim.models._safe_program import Unsafe, check_program
from tests import _hf_models as hf

needs_hf = pytest.mark.skipif(not hf.available(), reason="transformers is not installed (pip install deepslim[hf])")


@needs_hf
def test_a_bert_program_with_the_dunder_and_operator_saves_loads_and_computes_the_same(tmp_path):
    model, x = hf.build("bert")
    path = ds.save_model(model, tmp_path / "bert.pt2", example_input=x)
    back = ds.load_model(path)
    with torch.no_grad():
        assert torch.allclose(back(*x), model(*x), atol=1e-6)


@pytest.mark.parametrize("target", ["torch.ops.aten.__and__.Tensor", "torch.ops.aten.__or__.Tensor",
                                    "torch.ops.aten.__and__", "torch.ops.prims.convert_element_type.default",
                                    "torch.ops.higher_order.cond", "_operator.getitem", "_operator.and_"])  # fmt: skip
def test_genuine_operator_overloads_and_builtin_operators_are_accepted(target):
    check_program({"graph": {"nodes": [{"target": target}]}}, "m.json")


@pytest.mark.parametrize("target", ["torch.os.system", "torch.ops.aten.__class__.mro", "torch.ops.__class__.x.y",
                                    "torch.ops.load_library.x", "torch.ops.aten.add.__call__",
                                    "torch.ops.aten.__and__.__init__", "torch.ops.aten.name.x",
                                    "torch.ops.aten.no_such_op.default"])  # fmt: skip
def test_names_that_are_not_operators_are_refused_even_through_dunder_attributes(target):
    with pytest.raises(Unsafe):
        check_program({"graph": {"nodes": [{"target": target}]}}, "m.json")
