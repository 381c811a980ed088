"""A dynamic-int8 encoder's ``.dsz`` archive stores each dynamic layer as int8 codes and per-channel steps (the
weight of its int8 product), plus its fp32 columns/rows in fp32: about 4x smaller linear weights than the float ones,
restored so exactly that the reloaded model computes the same outputs, re-encodes to the same bytes and exports;
archives of the previous layout (float weights) still load, and malformed dynamic entries are ArchiveErrors."""

import struct

import pytest
import torch

import deepslim as ds
from deepslim.compress.coding import archive
from deepslim.compress.quantize import QuantMixin
from deepslim.errors import ArchiveError
from tests.compress.test_int8_dynamic_archive import _batch, _local_bert

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
SETTINGS = {  # the default channels (GELU split + scaled inputs), and fp32 inputs with per-tensor steps
    "scaled": {"split_outliers": 1, "split_inputs": 0, "scale_inputs": 2},
    "split": {"split_outliers": 1, "split_inputs": 1, "per_channel": False},
}


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def quantized(request, tmp_path_factory):
    model, arch = _local_bert(tmp_path_factory.mktemp("bert"))
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, **SETTINGS[request.param]), calib_data=[_batch(s) for s in
                                                                                            range(2)])  # fmt: skip
    return model, arch


def _dynamic(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin) and m.dynamic}


def _version(blob):
    return struct.unpack_from("<H", blob, 8)[0]


def test_dynamic_layers_are_stored_as_int8_codes_about_four_times_smaller_than_float(quantized):
    model, _ = quantized
    info = ds.archive_info(ds.encode(model))
    weights = {t.name.removesuffix(".weight"): t for t in info.tensors if t.name.endswith(".weight")}
    layers = _dynamic(model)
    assert len(layers) == 12 and all(weights[n].encoding == "linear" for n in layers)
    for name, m in layers.items():  # each part as it should be: codes of at most 8 bits, fp32 steps and channels
        parts, (n_out, n_in) = weights[name].parts, m.weight.shape
        fp32 = (0 if m.split_in is None else n_out * len(m.split_in)) + (
            0 if m.split_out is None else n_in * len(m.split_out))  # fmt: skip
        assert parts["codes"] <= n_out * n_in and parts["scales"] == 4 * (n_out if m.per_channel else 1), name
        assert parts.get("raw", 0) == 4 * fp32 and parts["tables"] < 600, name
    assert any(weights[n].parts.get("raw") for n in layers)  # some layers have fp32 channels
    stored = sum(weights[n].total for n in layers)
    assert stored < 0.4 * sum(4 * m.weight.numel() for m in layers.values())  # a 32-wide test BERT: ~0.36
    assert info.version == 2


def test_the_decoded_model_holds_the_same_int8_codes_steps_and_fp32_channels_and_computes_the_same(quantized):
    model, arch = quantized
    loaded = ds.decode(ds.encode(model), arch=arch)
    before, after = _dynamic(model), _dynamic(loaded)
    assert after.keys() == before.keys()
    for name, m in before.items():
        got = after[name]
        for a, b in zip(m.weight_codes(), got.weight_codes(), strict=True):
            assert (a is None and b is None) or torch.equal(torch.as_tensor(a), torch.as_tensor(b)), name
        if m.split_in is not None:  # bit for bit the float columns, not int8-rounded
            assert torch.equal(got.weight[:, m.split_in], m.weight[:, m.split_in]), name
        if m.split_out is not None:
            assert torch.equal(got.weight[m.split_out], m.weight[m.split_out]), name
    for seed in (42, 43):
        ids, mask = _batch(seed, n=5)
        with torch.no_grad():
            assert torch.equal(loaded(ids, mask), model(ids, mask))


def test_an_archive_decoded_and_encoded_again_is_the_same_bytes(quantized):
    model, arch = quantized
    blob = ds.encode(model)
    assert ds.encode(ds.decode(blob, arch=arch)) == blob


def test_a_decoded_dynamic_model_saved_as_pt_reloads_with_the_same_outputs(quantized, tmp_path):
    model, arch = quantized
    loaded = ds.decode(ds.encode(model), arch=arch)
    path = ds.save_model(loaded, tmp_path / "m.pt", example_input=_batch(0, n=1))
    again = ds.load_model(str(path), arch=arch).eval()
    ids, mask = _batch(44, n=3)
    with torch.no_grad():
        assert torch.equal(again(ids, mask), model(ids, mask))


def test_a_static_archive_keeps_version_1(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    ds.quantize_(net, ds.LinearQuantConfig(bits=8, min_cosine=0), calib_data=[torch.randn(16, 6)])
    blob = ds.encode(net)
    assert _version(blob) == 1 == ds.archive_info(blob).version
    assert _version(ds.encode(_local_bert(tmp_path / "bert")[0])) == 1  # a float encoder too


def _old_layout(monkeypatch):
    """Archives as written before dynamic layers had codes: the float weight, raw (what session 9 wrote)."""
    tensors = archive._inference_tensors

    def float_weights(model):
        items = tensors(model)
        for item in items:
            if item.fp32 is not None:
                item.linear = item.fp32 = None
        return items

    monkeypatch.setattr(archive, "_inference_tensors", float_weights)


def test_an_archive_with_float_dynamic_weights_still_loads_and_computes_the_same(quantized, monkeypatch):
    model, arch = quantized
    with monkeypatch.context() as m:
        _old_layout(m)
        old = ds.encode(model)
    info = ds.archive_info(old)
    assert info.version == 1 and {t.encoding for t in info.tensors if t.name.endswith("output.dense.weight")} == {
        "raw"}  # fmt: skip
    loaded = ds.decode(old, arch=arch)
    assert _dynamic(loaded).keys() == _dynamic(model).keys()
    ids, mask = _batch(45, n=4)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask), model(ids, mask))


def _tampered(blob, edit):
    """``blob`` with its manifest changed by ``edit`` (the checksum recomputed: only the content is wrong)."""
    import json
    import zlib

    _, version, flags, m_len, p_len, _ = archive._HEADER.unpack_from(blob)
    body = blob[archive.HEADER_BYTES:]
    manifest = json.loads(zlib.decompress(body[:m_len]))
    edit(manifest)
    new = zlib.compress(json.dumps(manifest).encode())
    rest = new + body[m_len:]
    return archive._HEADER.pack(archive.MAGIC, version, flags, len(new), p_len, zlib.crc32(rest)) + rest


def _entry(manifest, layer):
    return next(e for e in manifest["tensors"] if e["name"] == f"{layer}.weight")


DOWN = "encoder.encoder.layer.0.output.dense"  # its GELU outlier column is fp32


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: _entry(m, DOWN)["parts"].pop("fp32_columns"), r"fp32 columns hold None values, not 32"),
    (lambda m: _entry(m, DOWN)["parts"]["fp32_columns"].__setitem__(1, 64), r"fp32 columns hold 16 values, not 32"),
    (lambda m: m["modules"][DOWN].update(split_in=[3, 4]), r"fp32 columns hold 32 values, not 64"),
    (lambda m: m["modules"][DOWN].update(dynamic=False), r"without its dynamic int8 record"),
    (lambda m: _entry(m, DOWN)["parts"]["fp32_columns"].__setitem__(1, 6), r"6 bytes, not float32 values"),
])
def test_a_dynamic_entry_that_does_not_fit_its_record_is_an_archive_error(quantized, edit, message):
    model, arch = quantized
    blob = _tampered(ds.encode(model), edit)
    with pytest.raises(ArchiveError, match=message):
        ds.decode(blob, arch=arch)


def test_a_dynamic_entry_under_a_version_1_header_is_an_archive_error(quantized):
    model, arch = quantized
    blob = ds.encode(model)
    _, _, flags, m_len, p_len, crc = archive._HEADER.unpack_from(blob)
    relabelled = archive._HEADER.pack(archive.MAGIC, archive.VERSION, flags, m_len, p_len, crc)
    assert _version(blob) == archive.DYNAMIC_VERSION and archive.VERSION == 1  # the body (and its checksum) unchanged
    with pytest.raises(ArchiveError, match=r"a dynamic int8 weight in a version-1 archive .*malformed"):
        ds.decode(relabelled + blob[archive.HEADER_BYTES:], arch=arch)


def test_a_float_copy_of_a_decoded_dynamic_model_has_the_saved_models_weights(quantized):
    from deepslim.export.qdq import float_copy

    model, arch = quantized
    want, got = float_copy(model).state_dict(), float_copy(ds.decode(ds.encode(model), arch=arch)).state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    for name, m in _dynamic(model).items():  # the int8 product's weight: within half a step of the float one
        codes, step, _, axis = m.weight_codes()
        bound = (step.reshape(-1, 1) if axis is not None else step) / 2 * 1.0001
        scale = 1.0 if m.in_scale is None else m.in_scale
        assert bool(((want[f"{name}.weight"] - m.weight.detach()) * scale).abs().le(bound).all()), name
