"""``calibration="auto"`` (the default since session 9) calibrates every model that is not a fused BERT-style encoder
exactly as the default did before it existed: the quantized state and outputs of a convnet with real batch-norm
statistics, a zoo ResNet-20, the zoo's ViT and a Hugging Face BERT classifier are bit for bit the ones recorded by
the code before ``auto`` (commit 0d941f3's parent, run from ``git archive`` with this torch, 2.13.0).

The main oracle runs in the same process: ``auto`` gives the same bits as an explicit ``calibration="minmax"``. The
goldens are SHA-256 digests (first 16 hex digits) of the state dict (sorted names, dtype, shape, bytes) and of the
output on a fixed batch; float bits depend on the torch/transformers build and on the CPU's kernels (the same code
gives other bits on an AMD EPYC than on an Intel Sapphire Rapids with AMX), so they are checked only under the
versions and on the kind of CPU they were recorded on. A deliberate change to static calibration changes them:
re-record with ``_fingerprint`` on each kind of CPU and say why in the commit."""

import functools
import hashlib
from pathlib import Path

import pytest
import torch

import deepslim as ds
from tests.export.test_int8_dynamic_verbs import _Net  # the same small convnet with a real batch norm

# CPU kind -> name -> (state digest, output digest). Intel: recorded from 0d941f3^ (LinearQuantConfig(bits=8): minmax
# then); AMD: recorded in session 21 at 720c44e, whose static calibration is 0d941f3^'s (the Intel digests held there).
GOLDEN = {
    "GenuineIntel+amx": {
        "hf-bert": ("9a609f93045b8f38", "94c72cbb484e78cb"),
        "net": ("91fbee45aa6d867d", "1a195301ac9deceb"),
        "resnet20": ("1d42df5ffd234756", "27f2f0056aacebde"),
        "vit_tiny": ("7604fe8a9b34b143", "6c7822c04f6cfb2c"),
    },
    "AuthenticAMD": {
        "hf-bert": ("9a609f93045b8f38", "f113223d5800778c"),
        "net": ("91fbee45aa6d867d", "32be95e9ec60a0e9"),
        "resnet20": ("1d42df5ffd234756", "cf8b803a69a18f2e"),
        "vit_tiny": ("838c0bc358fdc086", "3e6eae57b161bb7b"),
    },
}
NAMES = sorted(GOLDEN["GenuineIntel+amx"])
RECORDED_WITH = {"torch": "2.13.0", "transformers": "5.24.0"}  # the goldens' float bits hold for these builds only



def _images(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _build(name):
    """(model, calibration batches, checked input) of ``name``, deterministic."""
    torch.manual_seed(0)
    if name == "net":
        net = _Net()
        with torch.no_grad():  # batch-norm statistics that are not the identity
            net.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, 8))
            net.bn.running_var.copy_(torch.linspace(0.5, 2.0, 8))
            net.bn.weight.copy_(torch.linspace(0.8, 1.2, 8))
        calib = [_images((8, 3, 10, 10), s) for s in range(3)]
        return net.eval(), calib, _images((4, 3, 10, 10), 9)
    if name in ("resnet20", "vit_tiny"):
        model = ds.create_model(name).eval()
        calib = [_images((4, 3, 32, 32), s) for s in range(2)]
        return model, calib, _images((2, 3, 32, 32), 9)
    from tests import _hf_models as hf

    model, _ = hf.build("bert")
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1::2, -3:] = 0  # padded rows
    ids = [torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    return model, [(i, mask) for i in ids[:2]], (ids[2], mask)


def _digest(tensors):
    h = hashlib.sha256()
    for key, t in tensors:
        t = t.detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@functools.cache
def _fingerprint(name, calibration=None):
    model, calib, x = _build(name)
    config = {} if calibration is None else {"calibration": calibration}
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, accept_low_fidelity=True, **config), calib_data=calib)
    with torch.no_grad():
        out = model(*x) if isinstance(x, tuple) else model(x)
    assert ds.quantization_report(model).calibration == (calibration or "minmax")
    return _digest(sorted(model.state_dict().items())), _digest([("output", out)])


def _cpu_kind():
    """The CPU's vendor, with "+amx" where it has AMX tiles (/proc/cpuinfo; "" where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    vendor = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("vendor_id")), "")
    return vendor + ("+amx" if " amx_tile" in text else "")


def _versions_differ(name):
    """Why the goldens of ``name`` cannot be compared here (another torch or transformers build, or a kind of CPU
    none was recorded on), or None."""
    have = {"torch": torch.__version__.split("+")[0]}
    if name == "hf-bert":
        have["transformers"] = pytest.importorskip("transformers").__version__
    differ = [f"{k} {v} (recorded with {RECORDED_WITH[k]})" for k, v in have.items() if v != RECORDED_WITH[k]]
    if _cpu_kind() not in GOLDEN:
        differ.append(f"CPU {_cpu_kind() or 'unknown'} (recorded on {', '.join(GOLDEN)})")
    return ", ".join(differ) or None


@pytest.mark.parametrize("name", NAMES)
def test_auto_quantizes_a_model_that_is_not_an_encoder_bit_for_bit_as_minmax_does(name):
    if name == "hf-bert":
        pytest.importorskip("transformers")
    assert _fingerprint(name) == _fingerprint(name, "minmax")  # and the report says minmax


@pytest.mark.parametrize("name", NAMES)
def test_auto_quantizes_a_model_that_is_not_an_encoder_bit_for_bit_as_before_auto_existed(name):
    differ = _versions_differ(name)
    if differ:
        pytest.skip(f"golden digests are float bits of another build or CPU: {differ}")
    assert _fingerprint(name) == GOLDEN[_cpu_kind()][name]


def test_the_fingerprint_tells_another_calibration_apart():
    state, out = _fingerprint("net", "percentile")
    assert state != _fingerprint("net", "minmax")[0] and out != _fingerprint("net", "minmax")[1]
