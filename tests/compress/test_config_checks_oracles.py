"""Every technique config's checks, value by value: each bad value refused with its own exact message, and the
boundary values on the other side accepted and normalised (tuples, enum members, read-only mappings).

A check written ``<`` for ``<=``, a message naming the wrong field, or a check dropped for per-layer overrides lets a
config through that fails later (or silently prunes or quantizes the wrong amount); a substring match of the message
would let a changed number or name through, so the whole message is compared.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import pytest

import deepslim as ds
from deepslim.compress.prune.channel import Importance
from deepslim.compress.prune.heads import HeadImportance
from deepslim.compress.prune.masks import Scope
from deepslim.compress.quantize.linear import Calibration
from deepslim.compress.quantize.nonlinear import KMeansInit


def _device(**kw: Any) -> ds.DeviceProfile:
    base: dict[str, Any] = {"name": "x", "description": "d", "peak_macs_per_s": {"fp32": 1e9},
                            "mem_bandwidth_bytes_per_s": 1e9, "onchip_bytes": 0}  # fmt: skip
    return ds.DeviceProfile(**{**base, **kw})


REFUSED = [
    (ds.EncoderKDConfig, dict(cpu_seconds=None),
     'set cpu_seconds, wall_seconds or steps: the distillation needs a budget'),
    (ds.EncoderKDConfig, dict(cpu_seconds=0),
     'cpu_seconds must be positive, got 0'),
    (ds.EncoderKDConfig, dict(cpu_seconds=None, wall_seconds=-1.0),
     'wall_seconds must be positive, got -1.0'),
    (ds.EncoderKDConfig, dict(steps=0),
     'steps must be at least 1, got 0'),
    (ds.EncoderKDConfig, dict(lr=0),
     'lr must be positive, batch_size >= 1, hidden_weight >= 0 and warmup in [0, 1)'),
    (ds.EncoderKDConfig, dict(batch_size=0),
     'lr must be positive, batch_size >= 1, hidden_weight >= 0 and warmup in [0, 1)'),
    (ds.EncoderKDConfig, dict(hidden_weight=-0.1),
     'lr must be positive, batch_size >= 1, hidden_weight >= 0 and warmup in [0, 1)'),
    (ds.EncoderKDConfig, dict(warmup=1.0),
     'lr must be positive, batch_size >= 1, hidden_weight >= 0 and warmup in [0, 1)'),
    (ds.EncoderKDConfig, dict(warmup=-0.01),
     'lr must be positive, batch_size >= 1, hidden_weight >= 0 and warmup in [0, 1)'),
    (ds.EncoderKDConfig, dict(relation_weight=-1.0),
     'relation_weight must be >= 0 (0: off), got -1.0'),
    (ds.EncoderKDConfig, dict(relation_weight=float('nan')),
     'relation_weight must be >= 0 (0: off), got nan'),
    (ds.PruneTokensConfig, dict(keep_ratio=0.0),
     'keep_ratio is the share of tokens a layer keeps, in (0, 1]; got 0.0'),
    (ds.PruneTokensConfig, dict(keep_ratio=1.5),
     'keep_ratio is the share of tokens a layer keeps, in (0, 1]; got 1.5'),
    (ds.PruneTokensConfig, dict(keep_ratio=True),
     'keep_ratio is the share of tokens a layer keeps, in (0, 1]; got True'),
    (ds.PruneTokensConfig, dict(keep_ratio=float('nan')),
     'keep_ratio is the share of tokens a layer keeps, in (0, 1]; got nan'),
    (ds.PruneTokensConfig, dict(keep_ratio=1.0, threshold=-0.5),
     'threshold is a multiple of the uniform attention share, a finite number >= 0 (0 keeps every token); got -0.5'),
    (ds.PruneTokensConfig, dict(keep_ratio=1.0, threshold=float('inf')),
     'threshold is a multiple of the uniform attention share, a finite number >= 0 (0 keeps every token); got inf'),
    (ds.PruneTokensConfig, dict(keep_ratio=1.0, threshold=True),
     'threshold is a multiple of the uniform attention share, a finite number >= 0 (0 keeps every token); got True'),
    (ds.PruneTokensConfig, dict(keep_ratio=0.9, threshold=1.0),
     'threshold replaces keep_ratio: set keep_ratio=1.0 with a threshold'),
    (ds.PruneTokensConfig, dict(keep_ratio=(1.0, 0.5), threshold=1.0),
     'threshold replaces keep_ratio: set keep_ratio=1.0 with a threshold'),
    (ds.MergeTokensConfig, dict(r=-1),
     'r is the number of tokens merged per layer, an int >= 0; got -1'),
    (ds.MergeTokensConfig, dict(r=True),
     'r is the number of tokens merged per layer, an int >= 0; got True'),
    (ds.MergeTokensConfig, dict(r=2.0),
     'r is the number of tokens merged per layer, an int >= 0; got 2.0'),
    (ds.MergeTokensConfig, dict(r=(2, -1)),
     'r is the number of tokens merged per layer, an int >= 0; got -1'),
    (ds.HeadPruneConfig, dict(head_ratio=1.0),
     'head_ratio is the share of units removed, in [0, 1); got 1.0'),
    (ds.HeadPruneConfig, dict(head_ratio=-0.1),
     'head_ratio is the share of units removed, in [0, 1); got -0.1'),
    (ds.HeadPruneConfig, dict(ffn_ratio=True),
     'ffn_ratio is the share of units removed, in [0, 1); got True'),
    (ds.HeadPruneConfig, dict(ffn_ratio='0.5'),
     "ffn_ratio is the share of units removed, in [0, 1); got '0.5'"),
    (ds.HeadPruneConfig, dict(round_to=0),
     'round_to must be an integer >= 1, got 0'),
    (ds.HeadPruneConfig, dict(batches=True),
     'batches must be an integer >= 1, got True'),
    (ds.HeadPruneConfig, dict(probes=1.5),
     'probes must be an integer >= 1, got 1.5'),
    (ds.HeadPruneConfig, dict(importance='random'),
     "importance must be one of ['sensitivity', 'magnitude'], got 'random'"),
    (ds.SVDConfig, dict(),
     'SVDConfig needs exactly one of rank_ratio, energy, mac_ratio (got none)'),
    (ds.SVDConfig, dict(rank_ratio=0.5, energy=0.9),
     'SVDConfig needs exactly one of rank_ratio, energy, mac_ratio (got rank_ratio, energy)'),
    (ds.TuckerConfig, dict(rank_ratio=0.5, energy=0.9, mac_ratio=0.3),
     'TuckerConfig needs exactly one of rank_ratio, energy, mac_ratio (got rank_ratio, energy, mac_ratio)'),
    (ds.SVDConfig, dict(energy=0.0),
     'energy must be in (0, 1], got 0.0'),
    (ds.TuckerConfig, dict(mac_ratio=1.01),
     'mac_ratio must be in (0, 1], got 1.01'),
    (ds.SVDConfig, dict(rank_ratio=0.5, overrides={'fc': 0.3}),
     "factorization overrides may only map layers to None (skip); override 'fc' gives 0.3"),
    (ds.KMeansConfig, dict(bits=0),
     'bits must be an integer from 1 to 8, got 0'),
    (ds.KMeansConfig, dict(bits=9),
     'bits must be an integer from 1 to 8, got 9'),
    (ds.KMeansConfig, dict(bits=4, overrides={'fc': 9}),
     "override 'fc' must be an integer from 1 to 8, got 9"),
    (ds.PowerOfTwoConfig, dict(bits=1),
     'bits must be an integer from 2 to 8, got 1'),
    (ds.PowerOfTwoConfig, dict(bits=9),
     'bits must be an integer from 2 to 8, got 9'),
    (ds.PowerOfTwoConfig, dict(bits=4, overrides={'fc': 1}),
     "override 'fc' must be an integer from 2 to 8, got 1"),
    (ds.BinaryConfig, dict(overrides={'fc': 2}),
     "binary overrides may only map layers to None (skip); override 'fc' gives 2"),
    (ds.TernaryConfig, dict(threshold_factor=0.0),
     'threshold_factor must be in (0, 2), got 0.0'),
    (ds.TernaryConfig, dict(threshold_factor=2.0),
     'threshold_factor must be in (0, 2), got 2.0'),
    (ds.TernaryConfig, dict(overrides={'fc': 2}),
     "ternary overrides may only map layers to None (skip); override 'fc' gives 2"),
    (ds.ChannelPruneConfig, dict(ratio=1.0),
     'ratio must be in [0, 1), got 1.0'),
    (ds.ChannelPruneConfig, dict(ratio=-0.1),
     'ratio must be in [0, 1), got -0.1'),
    (ds.ChannelPruneConfig, dict(ratio=0.5, round_to=0),
     'round_to must be >= 1, got 0'),
    (ds.ChannelPruneConfig, dict(ratio=0.5, overrides={'conv1': 1.0}),
     "override 'conv1' must be in [0, 1), got 1.0"),
    (ds.ChannelPruneConfig, dict(ratio=0.5, overrides={'conv1': -0.2}),
     "override 'conv1' must be in [0, 1), got -0.2"),
    (ds.ChannelPruneConfig, dict(ratio=0.5, importance='random'),
     "importance must be one of ['l1', 'l2', 'bn_scale', 'taylor'], got 'random'"),
    (ds.KDConfig, dict(temperature=0),
     'temperature must be positive, got 0'),
    (ds.KDConfig, dict(alpha=1.01),
     'alpha must be in [0, 1], got 1.01'),
    (ds.KDConfig, dict(alpha=-0.01),
     'alpha must be in [0, 1], got -0.01'),
    (ds.KDConfig, dict(hint_weight=-1),
     'hint_weight must be >= 0, got -1'),
    (ds.KDConfig, dict(hints={'re:a': 'b'}),
     "hints map a student layer name to a teacher layer name, got 're:a': 'b'"),
    (ds.KDConfig, dict(hints={'a': 3}),
     "hints map a student layer name to a teacher layer name, got 'a': 3"),
    (ds.TokenThresholdConfig, dict(keep_target=0.0),
     'keep_target is a share of the tokens, in (0, 1]; got 0.0'),
    (ds.TokenThresholdConfig, dict(keep_target=1.01),
     'keep_target is a share of the tokens, in (0, 1]; got 1.01'),
    (ds.TokenThresholdConfig, dict(penalty=-1),
     'penalty must be >= 0, temperature and threshold_lr positive'),
    (ds.TokenThresholdConfig, dict(temperature=0),
     'penalty must be >= 0, temperature and threshold_lr positive'),
    (ds.TokenThresholdConfig, dict(threshold_lr=0),
     'penalty must be >= 0, temperature and threshold_lr positive'),
    (ds.MagnitudePruneConfig, dict(sparsity=1.0),
     'sparsity must be in [0, 1), got 1.0'),
    (ds.MagnitudePruneConfig, dict(sparsity=-0.1),
     'sparsity must be in [0, 1), got -0.1'),
    (ds.MagnitudePruneConfig, dict(sparsity=0.5, overrides={'fc': 1.0}),
     "override 'fc' must be in [0, 1), got 1.0"),
    (ds.MagnitudePruneConfig, dict(sparsity=0.5, scope='everywhere'),
     "scope must be one of ['layer', 'global'], got 'everywhere'"),
    (ds.NMPruneConfig, dict(n=2, m=2),
     'N:M sparsity needs integers 0 < n < m, got 2:2'),
    (ds.NMPruneConfig, dict(n=0, m=4),
     'N:M sparsity needs integers 0 < n < m, got 0:4'),
    (ds.NMPruneConfig, dict(n=2.0, m=4),
     'N:M sparsity needs integers 0 < n < m, got 2.0:4'),
    (ds.NMPruneConfig, dict(n=2, m=4, overrides={'fc': 0.5}),
     "NMPruneConfig overrides may only map layers to None (skip); override 'fc' gives 0.5"),
    (ds.Float16Config, dict(dtype='fp8'),
     "dtype must be 'fp16' or 'bf16', got 'fp8'"),
    (ds.Float16Config, dict(overrides={'fc': 'bf16'}),
     "fp16/bf16 overrides may only map layers to None (skip); override 'fc' gives 'bf16'"),
    (_device, dict(peak_macs_per_s={'int8': 1e9}),
     "device 'x' needs an fp32 peak rate"),
    (_device, dict(peak_macs_per_s={'fp32': 0.0}),
     "device 'x': rates and bandwidth must be positive"),
    (_device, dict(peak_macs_per_s={'fp32': 1e9, 'int8': -1}),
     "device 'x': rates and bandwidth must be positive"),
    (_device, dict(peak_macs_per_s={'fp32': 1e9}, mem_bandwidth_bytes_per_s=0),
     "device 'x': rates and bandwidth must be positive"),
    (_device, dict(peak_macs_per_s={'fp32': 1e9}, onchip_bytes=-1),
     "device 'x': rates and bandwidth must be positive"),
    (ds.KMeansConfig, dict(bits=4, init='spectral'),
     "init must be one of ['linear', 'density', 'random'], got 'spectral'"),
    (ds.LinearQuantConfig, dict(bits=1),
     'bits must be an integer from 2 to 8, got 1'),
    (ds.LinearQuantConfig, dict(bits=9),
     'bits must be an integer from 2 to 8, got 9'),
    (ds.LinearQuantConfig, dict(activation_bits=0),
     'activation_bits must be an integer from 2 to 8, got 0'),
    (ds.LinearQuantConfig, dict(calibration='median'),
     "calibration must be one of ['minmax', 'percentile', 'mse', 'entropy', 'dynamic', 'auto'], got 'median'"),
    (ds.LinearQuantConfig, dict(min_cosine=1.01),
     'min_cosine must be a number from 0 to 1, got 1.01'),
    (ds.LinearQuantConfig, dict(min_agreement=-0.1),
     'min_agreement must be a number from 0 to 1, got -0.1'),
    (ds.LinearQuantConfig, dict(min_cosine=True),
     'min_cosine must be a number from 0 to 1, got True'),
    (ds.LinearQuantConfig, dict(overrides={'fc': 1}),
     "override 'fc' must be an integer from 2 to 8, got 1"),
    (ds.LinearQuantConfig, dict(calibration='dynamic', split_outliers=-1),
     'split_outliers must be a whole number >= 0 (or None: the default), got -1'),
    (ds.LinearQuantConfig, dict(calibration='dynamic', split_inputs=True),
     'split_inputs must be a whole number >= 0 (or None: the default), got True'),
    (ds.LinearQuantConfig, dict(calibration='dynamic', scale_inputs=1.5),
     'scale_inputs must be a whole number >= 0 (or None: the default), got 1.5'),
    (ds.LinearQuantConfig, dict(calibration='dynamic', split_inputs=2, scale_inputs=2),
     'split_inputs and scale_inputs treat the same channels (the widest inputs of the up projections): '
     'give one of them'),
    (ds.LinearQuantConfig, dict(calibration='minmax', split_outliers=2),
     "split_outliers/split_inputs/scale_inputs need calibration='dynamic' (or 'auto' on a transformer "
     "encoder); 'minmax' calibrates static ranges"),
    (ds.LinearQuantConfig, dict(calibration='percentile', scale_inputs=2),
     "split_outliers/split_inputs/scale_inputs need calibration='dynamic' (or 'auto' on a transformer "
     "encoder); 'percentile' calibrates static ranges"),
    (ds.FusedInt8Config, dict(float_layers='fc'),
     "float_layers must be a list of module names or 're:' patterns, got 'fc'"),
    (ds.FusedInt8Config, dict(float_layers=['fc', 3]),
     "float_layers must be a list of module names or 're:' patterns, got ['fc', 3]"),
    (ds.FusedInt8Config, dict(min_cosine=-0.1),
     'min_cosine must be >= 0 (0: no search), got -0.1'),
    (ds.FusedInt8Config, dict(max_float=-1),
     'max_float must be a whole number >= 0, got -1'),
    (ds.FusedInt8Config, dict(split_outliers=True),
     'split_outliers must be a whole number >= 0, got True'),
    (ds.FusedInt8Config, dict(split_inputs=1.0),
     'split_inputs must be a whole number >= 0, got 1.0'),
    (ds.FusedInt8Config, dict(select='random'),
     "select must be one of ['sensitivity', 'ffn_first'], got 'random'"),
    (ds.FusedInt8Config, dict(smooth=1.1),
     'smooth (SmoothQuant alpha) must be in [0, 1], got 1.1'),
    (ds.FusedInt8Config, dict(smooth=-0.1),
     'smooth (SmoothQuant alpha) must be in [0, 1], got -0.1'),
    (ds.FusedInt8Config, dict(smooth=0.5, split_outliers=2),
     'smooth cannot be combined with split_outliers/split_inputs (the smoothing Mul hides the feed-forward'
     ' blocks the splits look for): use one or the other'),
    (ds.FusedInt8Config, dict(smooth=0.5, split_inputs=2),
     'smooth cannot be combined with split_outliers/split_inputs (the smoothing Mul hides the feed-forward'
     ' blocks the splits look for): use one or the other'),

]


@pytest.mark.parametrize("cls, kwargs, message", REFUSED, ids=[f"{c.__name__}-{i}" for i, (c, _, _) in
                                                              enumerate(REFUSED)])  # fmt: skip
def test_each_bad_value_is_refused_with_its_own_message(cls, kwargs, message):
    with pytest.raises(ds.ConfigError) as err:
        cls(**kwargs)
    assert str(err.value) == message


def test_a_bad_regular_expression_among_the_float_layers_names_the_pattern():
    with pytest.raises(ds.ConfigError) as err:
        ds.FusedInt8Config(float_layers=["fc", "re:(a"])
    assert str(err.value).startswith("float_layers pattern 're:(a' is not a valid regular expression: missing )")


ACCEPTED = [
    (ds.EncoderKDConfig, dict(steps=1, cpu_seconds=None, warmup=0.0, hidden_weight=0.0, batch_size=1,
                              relation_weight=0.0, lr=1e-9)),
    (ds.EncoderKDConfig, dict(wall_seconds=0.5, cpu_seconds=None, warmup=0.999)),
    (ds.EncoderKDConfig, dict(cpu_seconds=1e-3)),
    (ds.PruneTokensConfig, dict(keep_ratio=1.0, threshold=0.0)),
    (ds.PruneTokensConfig, dict(keep_ratio=1e-6)),
    (ds.PruneTokensConfig, dict(keep_ratio=1, threshold=(0.0, 2.5))),
    (ds.MergeTokensConfig, dict(r=0)),
    (ds.MergeTokensConfig, dict(r=(0, 3))),
    (ds.HeadPruneConfig, dict(head_ratio=0.0, ffn_ratio=0.999, round_to=1, batches=1, probes=1)),
    (ds.SVDConfig, dict(rank_ratio=1.0)),
    (ds.SVDConfig, dict(energy=1e-9, overrides={"fc": None})),
    (ds.TuckerConfig, dict(mac_ratio=1.0)),
    (ds.KMeansConfig, dict(bits=1, overrides={"fc": 8})),
    (ds.KMeansConfig, dict(bits=8, overrides={"fc": 1})),
    (ds.PowerOfTwoConfig, dict(bits=2, overrides={"fc": 8})),
    (ds.PowerOfTwoConfig, dict(bits=8, overrides={"fc": 2})),
    (ds.TernaryConfig, dict(threshold_factor=1.999, overrides={"fc": None})),
    (ds.TernaryConfig, dict(threshold_factor=1e-9)),
    (ds.BinaryConfig, dict(overrides={"fc": None})),
    (ds.ChannelPruneConfig, dict(ratio=0.0, round_to=1, overrides={"a": 0.0, "b": 0.999, "c": None})),
    (ds.KDConfig, dict(temperature=1e-9, alpha=0.0, hint_weight=0.0)),
    (ds.KDConfig, dict(alpha=1.0, hints={"layer1": "layer2"})),
    (ds.TokenThresholdConfig, dict(keep_target=1.0, penalty=0.0, temperature=1e-9, threshold_lr=1e-9)),
    (ds.TokenThresholdConfig, dict(keep_target=1e-9)),
    (ds.MagnitudePruneConfig, dict(sparsity=0.0, overrides={"fc": 0.999})),
    (ds.NMPruneConfig, dict(n=1, m=2, overrides={"fc": None})),
    (ds.NMPruneConfig, dict(n=3, m=4)),
    (ds.Float16Config, dict(dtype="bf16", overrides={"fc": None})),
    (ds.Float16Config, dict(dtype="fp16")),
    (ds.LinearQuantConfig, dict(bits=2, activation_bits=8, min_cosine=0, min_agreement=1, overrides={"fc": 8})),
    (ds.LinearQuantConfig, dict(bits=8, min_cosine=1.0, min_agreement=0.0, overrides={"fc": 2})),
    (ds.LinearQuantConfig, dict(calibration="dynamic", split_outliers=0, split_inputs=0, scale_inputs=4)),
    (ds.LinearQuantConfig, dict(calibration="dynamic", split_inputs=4, scale_inputs=0)),
    (ds.FusedInt8Config, dict(float_layers=["fc", "re:layer\\.[01]"], min_cosine=0.0, max_float=0, smooth=1.0)),
    (ds.FusedInt8Config, dict(smooth=0.0, split_outliers=2, split_inputs=3, min_cosine=1.5)),
]


@pytest.mark.parametrize("cls, kwargs", ACCEPTED, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(ACCEPTED)])
def test_the_boundary_values_on_the_good_side_are_accepted(cls, kwargs):
    config = cls(**kwargs)
    for key, value in kwargs.items():
        if key not in ("overrides", "hints", "float_layers", "r", "threshold", "calibration"):
            assert getattr(config, key) == value, key


def test_devices_accept_no_on_chip_memory_and_keep_their_tables_read_only():
    device = _device(onchip_bytes=0, peak_macs_per_s={"fp32": 1.0, "int8": 4.0}, sources={"a": "b"},
                     depthwise_efficiency={"fp32": 0.5})  # fmt: skip
    assert device.onchip_bytes == 0 and dict(device.peak_macs_per_s) == {"fp32": 1.0, "int8": 4.0}
    for table in (device.peak_macs_per_s, device.sources, device.depthwise_efficiency):
        assert isinstance(table, MappingProxyType)
    assert dict(device.sources) == {"a": "b"} and dict(device.depthwise_efficiency) == {"fp32": 0.5}


def test_lists_become_tuples_strings_become_enum_members_and_overrides_are_checked_pairs():
    kd = ds.EncoderKDConfig(steps=2, layer_map=[1.0, 3])
    assert kd.layer_map == (1, 3) and all(type(i) is int for i in kd.layer_map)
    assert ds.EncoderKDConfig(steps=2).layer_map is None
    ch = ds.ChannelPruneConfig(ratio=0.5, ignore=["fc"], importance="bn_scale", overrides={"a": 0.25})
    assert ch.ignore == ("fc",) and ch.importance is Importance.BN_SCALE and dict(ch.overrides) == {"a": 0.25}
    hp = ds.HeadPruneConfig(importance="magnitude", ignore=["x"])
    assert hp.importance is HeadImportance.MAGNITUDE and hp.ignore == ("x",)
    assert ds.MagnitudePruneConfig(sparsity=0.5, scope="global").scope is Scope.GLOBAL
    assert ds.KMeansConfig(bits=4, init="density").init is KMeansInit.DENSITY
    assert ds.LinearQuantConfig(calibration="mse").calibration is Calibration.MSE
    assert ds.FusedInt8Config(float_layers=["a", "b"]).float_layers == ("a", "b")
    assert ds.TokenThresholdConfig(init=[0.5, 1.0]).init == (0.5, 1.0)
    assert ds.MergeTokensConfig(r=[1, 2]).r == (1, 2)
    assert ds.PruneTokensConfig(keep_ratio=[1.0, 0.5]).keep_ratio == (1.0, 0.5)
    assert ds.PruneTokensConfig(keep_ratio=1.0, threshold=[0.5, 2]).threshold == (0.5, 2)
    assert ds.PruneTokensConfig(keep_ratio=0.5).threshold is None
    assert dict(ds.KDConfig(hints={"a": "b"}).hints) == {"a": "b"}
    assert math.isclose(ds.TernaryConfig(threshold_factor=0.7).threshold_factor, 0.7)


def test_a_device_record_has_every_field_as_given():
    device = _device(name="board", description="a board", peak_macs_per_s={"fp32": 2e9, "int8": 8e9},
                     mem_bandwidth_bytes_per_s=3e9, onchip_bytes=4096, dram_bytes=1 << 30, op_overhead_s=2e-6,
                     calibrated=True, sources={"fp32": "datasheet"})  # fmt: skip
    assert device.to_dict() == {"name": "board", "description": "a board", "peak_macs_per_s": {"fp32": 2e9,
                                "int8": 8e9}, "mem_bandwidth_bytes_per_s": 3e9, "onchip_bytes": 4096,
                                "dram_bytes": 1 << 30, "op_overhead_s": 2e-6, "calibrated": True,
                                "sources": {"fp32": "datasheet"}}  # fmt: skip
