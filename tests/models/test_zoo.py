"""Registering a model tests it: every zoo entry builds, runs and keeps its published parameter count."""

import pytest
import torch

import deepslim as ds
from deepslim.models._registry import ARCH_ATTR

# Published counts (torchvision / the papers / HuggingFace) with the default heads.
GOLDEN_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v1": 4_231_976,
    "mobilenet_v2": 3_504_872,
    "vgg11": 132_863_336,
    "vgg16": 138_357_544,
    "squeezenet1_0": 1_248_424,
    "shufflenet_v2": 2_278_604,
    "vit_b16": 86_567_656,
    "bert_base": 109_482_240 + 768 * 2 + 2,  # BERT-base with pooler, plus a 2-class head
    "resnet20": 269_722,
    "resnet56": 853_018,
    "lenet300": 266_610,
    "lenet5": 431_080,
}
SMALL = {"lenet300", "lenet5", "resnet20", "resnet56", "vgg11_cifar", "vgg16_cifar", "vit_tiny", "bert_mini"}


def test_zoo_lists_the_required_architectures():
    required = {"lenet300", "lenet5", "vgg11", "vgg16", "resnet18", "resnet34", "resnet50", "resnet20", "resnet56",
                "mobilenet_v1", "mobilenet_v2", "shufflenet_v2", "squeezenet1_0"}  # fmt: skip
    assert required <= set(ds.list_models())
    assert ds.list_models("vit*") and ds.list_models("bert*")
    assert ds.list_models("resnet*") == ["resnet18", "resnet20", "resnet34", "resnet50", "resnet56"]


PRETRAINED = {"all-minilm-l6-v2"}  # real weights, loaded from a package: tested in tests/models/test_hf.py


@pytest.mark.parametrize("name", sorted(set(ds.list_models()) - PRETRAINED))
def test_every_model_builds_and_runs(name):
    big = name not in SMALL
    with torch.device("meta" if big else "cpu"):
        model = ds.create_model(name)
        x = ds.example_input(name, batch_size=2)
    model.eval()
    with torch.no_grad():
        y = model(x)
    entry = ds.models.get_model_entry(name)
    classes = entry.defaults()["num_classes"]
    assert tuple(y.shape) == (2, classes)
    if not big:
        assert torch.isfinite(y).all()
    if name in GOLDEN_PARAMS:
        assert sum(p.numel() for p in model.parameters()) == GOLDEN_PARAMS[name]
    assert getattr(model, ARCH_ATTR) == {"name": name, "options": {}}
    assert entry.paper  # every model cites its paper


@pytest.mark.parametrize("name,options,shape", [
    ("resnet18", {"num_classes": 10, "small_input": True, "input_size": 32}, (2, 10)),
    ("mobilenet_v2", {"num_classes": 10, "small_input": True, "input_size": 32, "width_mult": 0.5}, (2, 10)),
    ("mobilenet_v1", {"num_classes": 7, "small_input": True, "input_size": 32, "width_mult": 0.25}, (2, 7)),
    ("shufflenet_v2", {"num_classes": 10, "small_input": True, "input_size": 32, "width_mult": 0.5}, (2, 10)),
    ("lenet5", {"input_size": 8}, (2, 10)),
    ("lenet300", {"in_features": 64}, (2, 10)),
    ("resnet20", {"shortcut": "B"}, (2, 10)),
])  # fmt: skip
def test_small_input_variants_run(name, options, shape):
    model = ds.create_model(name, **options).eval()
    with torch.no_grad():
        assert tuple(model(ds.example_input(name, batch_size=2, **options)).shape) == shape


def test_lenet5_keeps_caffe_geometry_on_28px():
    model = ds.create_model("lenet5")
    assert model.classifier[1].in_features == 800  # 50 x 4 x 4, as in Caffe's LeNet


def test_unknown_model_lists_known_names():
    with pytest.raises(ds.UnknownNameError, match="known models: .*resnet18"):
        ds.create_model("resnet19")


def test_unknown_option_names_accepted_ones():
    with pytest.raises(ds.ConfigError, match="has no option 'num_clases'.*num_classes"):
        ds.create_model("resnet20", num_clases=10)


def test_invalid_option_value_is_config_error():
    with pytest.raises(ds.ConfigError, match="shortcut"):
        ds.create_model("resnet20", shortcut="C")
    with pytest.raises(ds.ConfigError, match="too small"):
        ds.create_model("lenet5", input_size=4, padding=0)
