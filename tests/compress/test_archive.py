"""The .dsz archive: bit-exact round trips over zoo models in every compressed form, byte accounting, and clear
ArchiveErrors for damaged, truncated and foreign files."""

import contextlib
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deepslim as ds
from deepslim.compress.coding.archive import HEADER_BYTES, MAGIC
from deepslim.compress.coding.sparse import decode_positions, encode_positions, stream_length

# -- relative index coding ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 5000), max_size=300), st.integers(2, 10))
def test_relative_indices_round_trip(positions, bits):
    pos = np.array(sorted(positions), dtype=np.int64)
    stream = encode_positions(pos, bits)
    assert stream.max(initial=0) <= (1 << bits) - 1  # every gap fits its field
    assert len(stream) == stream_length(pos, bits)
    np.testing.assert_array_equal(decode_positions(stream, bits, 5001), pos)


def test_filler_entries_bridge_long_gaps():
    # 2-bit gaps: filler symbol 3 skips 3 zeros; position 10 = 3 fillers (9 zeros) + gap 1
    stream = encode_positions(np.array([0, 10]), 2)
    assert stream.tolist() == [0, 3, 3, 3, 0]
    assert decode_positions(stream, 2, 11).tolist() == [0, 10]
    with pytest.raises(ds.ArchiveError, match="past the end"):
        decode_positions(stream, 2, 10)


# -- round trips ---------------------------------------------------------------------------------------------------


def _bits(t):
    return t.detach().contiguous().view(torch.uint8)


def assert_same_model(a, b, x):
    sa, sb = a.state_dict(), b.state_dict()
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert torch.equal(ya, yb), f"outputs differ by {(ya - yb).abs().max()}"
    # every weight the forward pass uses is bit-identical (effective weights of parametrized layers included)
    for name, m in a.named_modules():
        if ".parametrizations" in name:
            continue
        for attr in ("weight", "bias"):
            wa = getattr(m, attr, None)
            if isinstance(wa, torch.Tensor) and not hasattr(m, "weight_codes"):
                assert torch.equal(_bits(wa), _bits(getattr(b.get_submodule(name), attr))), f"{name}.{attr}"
    assert set(sb) <= {k.replace(".parametrizations.weight.original", ".weight") for k in sa} | set(sb)


def _lenet():
    return ds.create_model("lenet5", num_classes=10, in_channels=1, input_size=8)


def _calib(shape):
    return [(torch.randn(16, *shape),) for _ in range(2)]


CASES = {
    "dense": lambda m, x: m,
    "magnitude-90": lambda m, x: ds.prune_(m, ds.MagnitudePruneConfig(sparsity=0.9)),
    "channel-50": lambda m, x: ds.prune_(m, ds.ChannelPruneConfig(ratio=0.5), example_input=x),
    "pruned+kmeans": lambda m, x: ds.cluster_(ds.prune_(m, ds.MagnitudePruneConfig(sparsity=0.8)),
                                              ds.KMeansConfig(bits=4, share_bias=True)),
    "int8": lambda m, x: ds.quantize_(m, ds.LinearQuantConfig(bits=8), calib_data=_calib(x.shape[1:])),
    # 4-bit per-tensor activations on random weights fall below quantize_'s fidelity bar; the archive must still
    # store exactly what the model computes, so the low fidelity is accepted here
    "int4-per-tensor-asym": lambda m, x: ds.quantize_(m, ds.LinearQuantConfig(bits=4, per_channel=False,
                                                                               symmetric=False,
                                                                               accept_low_fidelity=True),
                                                      calib_data=_calib(x.shape[1:])),
    "int8-weight-only": lambda m, x: ds.quantize_(m, ds.LinearQuantConfig(bits=8, activation_bits=None)),
    "ternary": lambda m, x: ds.quantize_(m, ds.TernaryConfig()),
    "binary": lambda m, x: ds.quantize_(m, ds.BinaryConfig()),
    "pow2": lambda m, x: ds.quantize_(m, ds.PowerOfTwoConfig(bits=4)),
    "fp16": lambda m, x: ds.quantize_(m, ds.Float16Config()),
    "bf16": lambda m, x: ds.quantize_(m, ds.Float16Config(dtype="bf16")),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("arch", ["lenet5", "resnet20"])
def test_round_trip_is_bit_exact(arch, case):
    model = _lenet() if arch == "lenet5" else ds.create_model("resnet20", num_classes=10)
    x = torch.randn(3, 1, 8, 8) if arch == "lenet5" else torch.randn(3, 3, 32, 32)
    model = CASES[case](model, x).eval()
    blob = ds.encode(model)
    assert blob[: len(MAGIC)] == MAGIC
    assert_same_model(model, ds.decode(blob), x)
    flat = ds.decode(ds.encode(model, huffman=False))
    with torch.no_grad():
        assert torch.equal(model(x), flat(x))


@pytest.mark.parametrize("arch", ["mobilenet_v2", "shufflenet_v2", "vit_tiny", "bert_mini", "lenet300"])
def test_round_trip_across_the_zoo(arch):
    model = ds.create_model(arch).eval()
    x = ds.example_input(arch, 2)
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.7))
    ds.cluster_(model, ds.KMeansConfig(bits=5))
    decoded = ds.decode(ds.encode(model))
    with torch.no_grad():
        assert torch.equal(model(x), decoded(x))


def test_qat_model_round_trips_through_its_learned_scales():
    data = ds.load_data("digits")
    model = _lenet()
    ds.quantize_(model, ds.LinearQuantConfig(bits=4, qat=True), calib_data=data.calib)
    ds.fit(model, data, epochs=1)
    x = next(iter(data.test))[0]
    decoded = ds.decode(ds.encode(model))
    with torch.no_grad():
        assert torch.equal(model(x), decoded(x))


def test_byte_accounting_adds_up_and_compression_shows():
    model = _lenet()
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.9))
    dense = ds.archive_info(ds.encode(model))
    ds.cluster_(model, ds.KMeansConfig(bits=4))
    blob = ds.encode(model)
    info = ds.archive_info(blob)
    assert info.total_bytes == len(blob) == sum(info.by_part.values())
    assert info.header_bytes == info.by_part["header"] > HEADER_BYTES
    assert sum(t.total for t in info.tensors) + info.header_bytes == len(blob)
    weight = next(t for t in info.tensors if t.name == "classifier.1.weight")
    assert weight.layout == "sparse" and weight.encoding == "shared" and set(weight.parts) >= {"indices", "codes"}
    assert info.dense_fp32_bytes() == 4 * sum(p.numel() for p in _lenet().parameters())
    # 90% zeros + 4-bit shared values: far below the fp32 size, and below the 90%-sparse fp32 archive
    assert info.ratio > 25 and info.total_bytes < dense.total_bytes / 3
    assert len(ds.encode(model, huffman=False)) > len(blob)
    assert "ratio" in str(info) and info.to_dict()["by_part"] == info.by_part


def test_structure_change_and_custom_models():
    model = ds.create_model("lenet300", in_features=64)
    ds.factorize_(model, ds.SVDConfig(rank_ratio=0.25))
    with pytest.raises(ds.ConfigError, match="layer tree"):
        ds.encode(model)
    custom = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    blob = ds.encode(custom)
    with pytest.raises(ds.ModelLoadError, match="records no architecture; pass arch=NAME"):
        ds.decode(blob)
    target = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    ds.decode(blob, model=target)
    assert all(torch.equal(a, b) for a, b in zip(custom.state_dict().values(), target.state_dict().values(),
                                                 strict=True))  # fmt: skip


# -- damaged archives ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob():
    torch.manual_seed(0)
    model = _lenet()
    ds.prune_(model, ds.MagnitudePruneConfig(sparsity=0.8))
    ds.cluster_(model, ds.KMeansConfig(bits=4))
    return ds.encode(model)


def _reseal(header_and_body: bytes) -> bytes:
    """Recompute the checksum so that damage inside the body gets past it (to test the checks behind it)."""
    magic, version, flags, m_len, p_len, _ = struct.unpack_from("<8sHHIQI", header_and_body)
    body = header_and_body[HEADER_BYTES:]
    return struct.pack("<8sHHIQI", magic, version, flags, m_len, p_len, zlib.crc32(body)) + body


def test_damaged_archives_say_what_is_wrong(blob):
    cases = {
        "bad magic": b"PK\x03\x04" + blob[4:],
        "unsupported archive version 9": blob[:8] + struct.pack("<H", 9) + blob[10:],
        "checksum mismatch": blob[:-5] + bytes([blob[-5] ^ 0xFF]) + blob[-4:],
        "truncated": blob[: len(blob) // 2],
        "unexpected bytes after": blob + b"\0\0",
    }
    for message, data in cases.items():
        with pytest.raises(ds.ArchiveError, match=message):
            ds.decode(data)
    with pytest.raises(ds.ArchiveError, match="bad magic"):
        ds.decode(b"")
    with pytest.raises(ds.ArchiveError, match="shorter than"):
        ds.decode(blob[:12])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_resealed_corruption_never_gives_an_unrelated_exception(blob, data):
    pos = data.draw(st.integers(HEADER_BYTES, len(blob) - 1))
    damaged = bytearray(blob)
    damaged[pos] ^= data.draw(st.integers(1, 255))
    # an ArchiveError is the expected outcome for most damage; a flipped bit in a value decodes to other weights
    with contextlib.suppress(ds.ArchiveError):
        ds.decode(_reseal(bytes(damaged)))
