"""The profiler: golden MAC tables, an independent oracle (PyTorch's FlopCounterMode), memory, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import deepslim as ds


class Fn(nn.Module):
    def __init__(self, fn, *params):
        super().__init__()
        self.fn = fn
        self.ws = nn.ParameterList(params)

    def forward(self, *x):
        return self.fn(*x, *self.ws)


def _q(*shape):
    return torch.randn(*shape)


# (module, input, exact MACs) — each MAC count worked out by hand
GOLDEN = [
    (nn.Conv2d(3, 8, 3), _q(1, 3, 10, 10), 8 * 8 * 8 * 3 * 9),
    (nn.Conv2d(3, 8, 3, stride=2, padding=1), _q(2, 3, 10, 10), 2 * 8 * 5 * 5 * 3 * 9),
    (nn.Conv2d(16, 16, 3, padding=1, groups=16), _q(1, 16, 6, 6), 16 * 6 * 6 * 9),  # depthwise
    (nn.Conv2d(16, 32, 1, groups=4), _q(1, 16, 5, 5), 32 * 5 * 5 * 4),  # grouped
    (nn.ConvTranspose2d(4, 6, 2, stride=2), _q(1, 4, 3, 3), 4 * 3 * 3 * 6 * 4),
    (nn.Conv1d(4, 5, 3), _q(1, 4, 10), 5 * 8 * 4 * 3),
    (nn.Linear(20, 30), _q(4, 20), 4 * 20 * 30),
    (nn.Linear(20, 30, bias=False), _q(2, 7, 20), 2 * 7 * 20 * 30),  # batched tokens
    (Fn(torch.matmul), (_q(3, 5, 6), _q(3, 6, 7)), 3 * 5 * 6 * 7),
    (Fn(lambda a, b: torch.einsum("bij,bjk->bik", a, b)), (_q(2, 4, 5), _q(2, 5, 3)), 2 * 4 * 5 * 3),
    (Fn(lambda q, k, v: F.scaled_dot_product_attention(q, k, v)), (_q(2, 3, 5, 8), _q(2, 3, 7, 8), _q(2, 3, 7, 4)),
     2 * 3 * 5 * 7 * (8 + 4)),
    (nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)), _q(1, 3, 8, 8), 0),
    (nn.Embedding(100, 16), torch.randint(0, 100, (2, 9)), 0),
]  # fmt: skip


@pytest.mark.parametrize("module,x,macs", GOLDEN, ids=[type(g[0]).__name__ + str(i) for i, g in enumerate(GOLDEN)])
def test_golden_macs(module, x, macs):
    assert ds.profile(module, x).macs == macs


@pytest.mark.parametrize("module,x,macs", GOLDEN[:11], ids=[f"flops{i}" for i in range(11)])
def test_agrees_with_torch_flop_counter(module, x, macs):
    args = x if isinstance(x, tuple) else (x,)
    with FlopCounterMode(display=False) as counter:
        module(*args)
    assert ds.profile(module, x).macs * 2 == counter.get_total_flops()


# Published figures (fvcore / torchvision / the papers), counted on the meta device: nothing is computed.
GOLDEN_MODELS = [
    ("resnet18", 1_814_073_344),  # "1.814 G"
    ("resnet50", 4_089_184_256),  # "≈ 4.1 G"
    ("mobilenet_v2", 300_774_272),  # "≈ 300 M"
    ("vgg16", 15_470_264_320),  # "15.47 G"
    ("vit_b16", 17_563_828_224),  # "≈ 17.6 G"
    ("bert_base", 11_174_217_216),  # "≈ 11 G" at sequence length 128
    ("mobilenet_v1", 568_740_352),  # "569 M"
    ("squeezenet1_0", 818_924_576),
    ("shufflenet_v2", 144_907_992),
    ("resnet20", 40_551_040),  # "41 M"
]


@pytest.mark.parametrize("name,macs", GOLDEN_MODELS)
def test_golden_model_macs(name, macs):
    with torch.device("meta"):
        model = ds.create_model(name)
        x = ds.example_input(name)
    prof = ds.profile(model, x)
    assert prof.macs == macs
    assert prof.params == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert prof.macs * 2 == counter.get_total_flops()


def test_meta_and_cpu_profiles_agree():
    model = ds.create_model("resnet20")
    cpu = ds.profile(model)
    with torch.device("meta"):
        meta = ds.profile(ds.create_model("resnet20"))
    assert (cpu.macs, cpu.params, cpu.weight_bytes) == (meta.macs, meta.params, meta.weight_bytes)
    assert [lp.name for lp in cpu.layers] == [lp.name for lp in meta.layers]


def test_layers_attribute_functional_ops_to_their_module():
    prof = ds.profile(ds.create_model("resnet18"))
    block = prof.layer("layer1.0")  # the residual add runs in BasicBlock.forward itself
    assert block.type == "BasicBlock" and block.macs == 0 and block.other_ops == 64 * 56 * 56
    assert prof.layer("layer1.0.relu").calls == 2  # one ReLU module used twice
    conv = prof.layer("conv1")
    assert conv.macs == 64 * 112 * 112 * 3 * 49 and conv.params == 64 * 3 * 49
    assert conv.output_shape == (1, 64, 112, 112) and conv.output_bytes == 64 * 112 * 112 * 4
    assert conv.weight_bytes == 64 * 3 * 49 * 4
    assert prof.layer("fc").arithmetic_intensity == pytest.approx(512 * 1000 / (512 * 1000 * 4 + 4000 + 2048 + 4000))


def test_peak_activation_memory_by_liveness():
    model = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 5))
    # input 40 B; Linear-1 writes 400 B; ReLU reads those 400 B and writes another 400 B (peak 800); Linear-2 20 B
    assert ds.profile(model, torch.randn(1, 10)).peak_activation_bytes == 800
    inplace = nn.Sequential(nn.Linear(10, 100), nn.ReLU(inplace=True), nn.Linear(100, 5))
    assert ds.profile(inplace, torch.randn(1, 10)).peak_activation_bytes == 440  # input still alive with 400 B


def test_shared_weights_count_once_and_dtype_sets_bytes():
    lin = nn.Linear(8, 8)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    prof = ds.profile(model, torch.randn(1, 8))
    assert prof.params == 72 and prof.weight_bytes == 72 * 4 and prof.macs == 128
    half = ds.profile(nn.Linear(8, 8).to(torch.bfloat16), torch.randn(1, 8, dtype=torch.bfloat16))
    assert half.weight_bytes == 72 * 2 and half.layers[0].dtype == "bf16"


def test_compressed_modules_report_their_own_weight_bytes():
    class Packed(nn.Linear):
        deepslim_compute_dtype = "int8"

        def deepslim_weight_bytes(self):
            return 5 * 8 // 2 + 4  # 4-bit codes plus a scale

    prof = ds.profile(Packed(8, 5, bias=False), torch.randn(1, 8))
    assert prof.weight_bytes == 24 and prof.layers[0].dtype == "int8"


def test_profile_restores_training_mode_and_does_not_change_weights():
    model = ds.create_model("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds.profile(model)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics untouched


def test_wrong_input_shape_is_one_clear_error():
    with pytest.raises(ds.InputShapeError, match=r"input of shape \(1, 1, 28, 28\) failed"):
        ds.profile(ds.create_model("resnet18"), torch.randn(1, 1, 28, 28))


def test_unknown_operator_strict_and_lenient():
    model = Fn(torch.linalg.inv)
    x = torch.eye(3)[None] * 2
    with pytest.raises(ds.UnsupportedOpError, match="aten.linalg_inv_ex.*strict=False"):
        ds.profile(model, x)
    prof = ds.profile(model, x, strict=False)
    assert prof.macs == 0 and "linalg_inv_ex" in prof.warnings[0]


def test_example_input_required_for_foreign_models():
    with pytest.raises(ds.ConfigError, match="example_input is required"):
        ds.profile(nn.Linear(3, 3))
    prof = ds.profile(nn.Linear(3, 3), input_shape=(2, 3))
    assert prof.macs == 18


def test_a_model_file_that_records_its_input_shape_profiles_without_one(tmp_path):
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    ds.save_model(model, tmp_path / "m.pt2", example_input=torch.randn(3, 5))
    loaded = ds.load_model(tmp_path / "m.pt2")
    assert ds.profile(loaded).macs == 3 * (5 * 4 + 4 * 2)  # the recorded shape, batch included


def test_profile_from_zoo_name_and_serialization():
    prof = ds.profile("lenet300")
    d = prof.to_dict()
    assert d["macs"] == 784 * 300 + 300 * 100 + 100 * 10 == prof.macs
    assert d["layers"][0]["name"] == "fc1" and d["cost"] is None
    text = str(prof)
    assert "fc1" in text and "MACs 266,200" in text
