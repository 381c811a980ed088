"""Dynamic int8 (``Calibration.DYNAMIC``): ONNX Runtime's dynamic quantization, computed in PyTorch.

A transformer encoder's activations have no range a fixed calibration fits: the feed-forward blocks' GELU outputs
and LayerNorm outputs carry a few channels 10–20× wider than the rest, and which batch reaches how far varies
(all-MiniLM-L6-v2: static min-max int8 reached cosine 0.941, percentile 0.950). ONNX Runtime's dynamic int8 —
the fast path of its fused BERT graph — quantizes each MatMul input per tensor at run time instead:
``DynamicQuantizeLinear`` takes [min(x, 0), max(x, 0)] of the batch, step (max − min) / 255, a u8 zero point
rounded half to even; weights are s8, symmetric, per output channel (step max |w| / 127). A dynamic layer here
computes exactly that on each batch, so the quantized PyTorch model and the exported file agree to float rounding.

Outlier channels. One wide channel sets the step of every other, so the ``split_outliers`` widest GELU-output
channels of each feed-forward block (its up projection's outputs, which its down projection reads) are computed in
fp32 beside the int8 products — their up-projection rows, their GELU, their down-projection columns (LLM.int8()'s
decomposition, Dettmers et al., NeurIPS 2022, with the channels fixed on the calibration data). The up projection's
input (a LayerNorm output, which also feeds the residual) has one or two channels 15× wider than the median: the
``scale_inputs`` widest are divided by s = max|x_c| / (4 · median channel max) before the int8 product and their
weight columns multiplied by s — the same product in float, a 4× narrower dynamic range (SmoothQuant's migration,
Xiao et al., ICML 2023, on those channels only); or, with ``split_inputs``, they are multiplied in fp32 beside it.
On all-MiniLM-L6-v2 scaling 2 channels reached the fidelity of splitting them (mean cosine 0.9972, min 0.9950) at
the cost of one ``Mul``. The exporter writes the same graph (:mod:`deepslim.export._mixed_int8`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim._hooks import hooked
from deepslim._modes import inference_mode
from deepslim.compress.quantize._inputs import batch_inputs
from deepslim.compress.quantize.observers import Calibration
from deepslim.errors import ConfigError, DataError
from deepslim.models.hf import attention_heads

# the encoders whose ONNX graph ONNX Runtime's transformer optimizer fuses (eager BERT-style attention)
FUSED_ENCODERS = ("deepslim.models.hf.SentenceEncoder",)
SCALE_TO = 4.0  # scale_inputs: a scaled channel's range becomes this many times the median channel's


def fused_encoder(model: nn.Module) -> bool:
    """Whether ``model`` holds an encoder whose ONNX graph ONNX Runtime fuses into its ``Attention`` kernel: a
    BERT-style ``SentenceEncoder`` that reduces no tokens (a merging graph is not fused) and has one head count in
    every layer (ORT's fused attention takes one for the whole graph), in Hugging Face's eager attention (the
    pattern the optimizer recognises; ``load_hf`` loads it so)."""
    found = [m for m in model.modules() if any(f"{c.__module__}.{c.__qualname__}" in FUSED_ENCODERS
                                               for c in type(m).__mro__)]  # fmt: skip
    heads = set(attention_heads(model))
    eager = all(getattr(getattr(getattr(m, "encoder", None), "config", None), "_attn_implementation", "eager")
                in ("eager", None) for m in found)  # fmt: skip
    return bool(found) and eager and all(getattr(m, "reduction", None) is None for m in found) and len(heads) <= 1


def resolve(model: nn.Module, config: Any) -> Calibration:
    """The calibration ``config`` means for ``model``: AUTO is DYNAMIC for a fused encoder quantized to 8 bits with
    8-bit activations and no QAT (what ONNX Runtime's dynamic kernels run), MINMAX otherwise."""
    from deepslim.compress.quantize.linear import dynamic_conflict

    cal: Calibration = config.calibration
    if cal is not Calibration.AUTO:
        return cal
    return Calibration.DYNAMIC if not dynamic_conflict(config) and fused_encoder(model) else Calibration.MINMAX


def dynamic_u8(x: torch.Tensor) -> torch.Tensor:
    """``x`` quantized to u8 over its own range and back, as ``DynamicQuantizeLinear`` does: [min(x, 0),
    max(x, 0)], step (max − min) / 255, zero point round(−min / step), codes round(x / step) + zero (half to even)."""
    if x.numel() == 0:
        raise DataError(f"dynamic int8 got an empty input (shape {tuple(x.shape)}): a batch needs at least one row "
                        "and one token")  # fmt: skip
    lo = torch.clamp(x.detach().min(), max=0.0)
    hi = torch.clamp(x.detach().max(), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all zeros: step 1, as ONNX Runtime (no branch)
    zero = torch.round(torch.clamp(-lo / scale, 0.0, 255.0))
    q = torch.clamp(torch.round(x / scale) + zero, 0.0, 255.0)
    return ((q - zero) * scale).detach() + (x - x.detach())  # straight-through: gradients reach the float input


def _weight_step(w: torch.Tensor, per_channel: bool, fixed: Any = None) -> torch.Tensor:
    """The s8 step of ``w`` (out, in) per output channel, (out, 1), or per tensor, (1, 1): max |w| / 127 (1 for a
    zero row), or the ``fixed`` (scale, zero point) a layer restored from its int8 codes holds (the step it was
    saved with, so that the reloaded codes are the saved ones)."""
    if fixed is not None:
        return fixed[0].detach().to(dtype=w.dtype, device=w.device).reshape(-1, 1)
    bound = w.detach().abs().amax(1, keepdim=True) if per_channel else w.detach().abs().amax().reshape(1, 1)
    return torch.where(bound > 0, bound / 127.0, torch.ones_like(bound))


def _s8_per_channel(w: torch.Tensor, per_channel: bool, fixed: Any = None) -> torch.Tensor:
    """``w`` (out, in) quantized to s8 symmetric, per output channel (or per tensor), and back."""
    scale = _weight_step(w, per_channel, fixed)
    q = torch.clamp(torch.round(w / scale), -127, 127) * scale
    return q.detach() + (w - w.detach())  # straight-through, as the static weights: fine-tuning trains the floats


def _int8_weight(m: Any) -> torch.Tensor:
    """The weight whose s8 codes a dynamic layer's int8 product uses: its columns multiplied by ``in_scale``, and
    without the fp32 columns when ``split_rows`` (their per-channel steps then cover the rest only)."""
    wi = m.weight
    if m.in_scale is not None:
        wi = wi * m.in_scale.to(dtype=wi.dtype, device=wi.device)
    if m.split_in is not None and m.split_rows:
        keep = torch.ones(wi.shape[1], dtype=wi.dtype, device=wi.device)
        keep[m.split_in] = 0.0
        wi = wi * keep
    return wi


def dynamic_linear(m: Any, x: torch.Tensor) -> torch.Tensor:
    """A dynamic int8 linear layer (``m``: a QLinear with ``dynamic`` set): u8 input per batch times s8 weights,
    plus the fp32 split channels (see the module docstring)."""
    w, bias = m.weight, m.bias
    xi = x
    if m.in_scale is not None:  # the same product in float: (x / s) · (w · s); s in the layer's dtype and device
        xi = x * (1.0 / m.in_scale.to(dtype=x.dtype, device=x.device))
    if m.split_in is not None:
        keep = torch.ones(w.shape[1], dtype=x.dtype, device=x.device)
        keep[m.split_in] = 0.0
        xi = xi * keep
    wq = _s8_per_channel(_int8_weight(m), m.per_channel, getattr(m, "fixed_weight_params", None))
    y = F.linear(dynamic_u8(xi), wq, bias)
    if m.split_in is not None:
        y = y + F.linear(x[..., m.split_in], w[:, m.split_in])
    if m.split_out is not None:
        y = y.clone()
        y[..., m.split_out] = F.linear(x, w[m.split_out], None if bias is None else bias[m.split_out])
    return y


def weight_codes(m: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int | None]:
    """A dynamic layer's int8 weight as (s8 codes, step, zero point 0, axis 0 or None), as
    ``QuantMixin.weight_codes`` gives a static one: ``codes · step`` is exactly the weight its int8 product uses
    (``in_scale`` applied, the fp32 columns zero when ``split_rows``). The fp32 channels themselves are
    :func:`fp32_channels`; :func:`weight_from_codes` inverts the pair."""
    with torch.no_grad():
        wi = _int8_weight(m).detach()
        step = _weight_step(wi, m.per_channel, getattr(m, "fixed_weight_params", None))
        codes = torch.clamp(torch.round(wi / step), -127, 127).to(torch.int32)
    step = step.reshape(-1) if m.per_channel else step.reshape(())
    return codes, step, torch.zeros(step.shape, dtype=torch.int32), 0 if m.per_channel else None


def float_weight(m: Any) -> torch.Tensor:
    """The float weight a dynamic layer's product amounts to: its int8 weight (:func:`weight_codes`, with the steps
    it holds, saved ones included) with ``in_scale`` undone and its fp32 channels in fp32. What a float copy of the
    layer holds (``QuantMixin.quantized_weight``); the same for the layer and for it reloaded from an archive."""
    codes, step, _, axis = weight_codes(m)
    value = codes.to(m.weight.dtype) * (step.reshape(-1, 1) if axis is not None else step).to(m.weight.dtype)
    return weight_from_codes(value, dynamic_state(m), fp32_channels(m))


def fp32_channels(m: Any) -> dict[str, torch.Tensor]:
    """A dynamic layer's weight entries computed in fp32: ``columns`` (out, k) of its ``split_in`` inputs,
    ``rows`` (k, in) of its ``split_out`` outputs (absent when it has none)."""
    w = m.weight.detach()
    out = {}
    if m.split_in is not None:
        out["columns"] = w[:, m.split_in].contiguous()
    if m.split_out is not None:
        out["rows"] = w[m.split_out].contiguous()
    return out


def weight_from_codes(value: torch.Tensor, state: Any, fp32: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float weight of a dynamic layer restored from ``value`` (its int8 codes times their steps, as
    :func:`weight_codes` gives them), its :func:`dynamic_state` record ``state`` and its :func:`fp32_channels`:
    the columns divided by ``in_scale`` again and the fp32 channels put back. With the saved steps fixed, its
    forward computes exactly the saved layer's. ValueError when the record or the channels do not fit."""
    if not isinstance(state, dict) or not state.get("dynamic") or value.ndim != 2:
        raise ValueError("int8 codes of a dynamic layer without its dynamic int8 record (or not an (out, in) weight)")
    n_out, n_in = value.shape
    channels = {key: _channels(state.get(key), n, key) for key, n in (("split_in", n_in), ("split_out", n_out))}
    w = value.clone()
    scale = state.get("in_scale")
    if scale is not None:
        if not (isinstance(scale, list) and len(scale) == n_in and all(isinstance(v, float) and v > 0 for v in scale)):
            raise ValueError(f"in_scale does not hold {n_in} positive scales")
        w = w / torch.tensor(scale, dtype=torch.float32).to(w.dtype)
    for key, part in (("split_in", "columns"), ("split_out", "rows")):  # given flat or shaped
        ch, got = channels[key], fp32.get(part)
        want = None if ch is None else (n_out, len(ch)) if part == "columns" else (len(ch), n_in)
        have, need = (None if got is None else got.numel()), (None if want is None else want[0] * want[1])
        if have != need:
            raise ValueError(f"its fp32 {part} hold {have} values, not {need} ({key} {ch})")
        if got is not None and want is not None:
            if part == "columns":
                w[:, channels[key]] = got.reshape(want).to(w.dtype)
            else:
                w[channels[key]] = got.reshape(want).to(w.dtype)
    return w


def _channels(value: Any, n: int, key: str) -> list[int] | None:
    """A channel list of a dynamic record, checked against the weight's ``n`` channels (ValueError)."""
    if value is not None and not (isinstance(value, list) and value and all(
            type(c) is int and 0 <= c < n for c in value) and len(set(value)) == len(value)):  # fmt: skip
        raise ValueError(f"{key} {value!r} holds channels outside the weight's {n} (or is not a list of them)")
    return value


def ffn_pairs(model: nn.Module, layers: Iterable[str]) -> list[tuple[str, str]]:
    """(up projection, down projection) of every feed-forward block (the layer-kind registry's FFN adapters) whose
    two layers are both in ``layers``."""
    from deepslim.models.adapters import ffn_adapter

    names = set(layers)
    pairs = []
    for name, m in model.named_modules():
        adapter = ffn_adapter(m)
        if adapter is None or len(adapter.inputs) != 1:
            continue
        up, down = (f"{name}.{p}" if name else p for p in (adapter.inputs[0], adapter.output))
        if up in names and down in names:
            pairs.append((up, down))
    return pairs


def _widest(amax: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` channels of largest max |x|, ascending (ties: the lower index; the exporter's rule)."""
    return torch.sort(torch.argsort(-amax, stable=True)[:k]).values


def channel_stats(model: nn.Module, layers: Iterable[str], calib_data: Iterable[Any],
                  inputs: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per input channel max |x| over ``calib_data`` of both layers of every feed-forward block among ``layers``,
    measured in the float model (before quantization; the statistics the exporter's own splitting reads)."""
    modules = dict(model.named_modules())
    watched = {n for pair in ffn_pairs(model, layers) for n in pair}
    amax: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(mod: nn.Module, args: tuple[Any, ...]) -> None:
            a = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0)
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)

        return record

    with hooked({n: modules[n] for n in watched}, pre=hook), inference_mode(model), torch.no_grad():
        for batch in calib_data:
            model(*batch_inputs(model, batch, inputs))
    return amax


def plan_splits_(model: nn.Module, layers: dict[str, Any], amax: dict[str, torch.Tensor], outliers: int, ins: int,
                 scaled: int = 0) -> dict[str, dict[str, list[int]]]:  # fmt: skip
    """Choose and set the fp32 / scaled channels of every feed-forward block of dynamic ``layers`` from the widest
    channels (``amax``: :func:`channel_stats`): ``outliers`` GELU outputs and ``ins`` up-projection inputs in fp32,
    ``scaled`` up-projection inputs scaled down. Returns the channels as ``{"outliers": {down: channels}, "inputs":
    {up: channels}, "scaled": {up: channels}}``."""
    pairs = ffn_pairs(model, layers)
    chosen: dict[str, dict[str, list[int]]] = {"outliers": {}, "inputs": {}, "scaled": {}}
    for up, down in pairs:
        width, hidden = layers[up].weight.shape
        if outliers >= width or max(ins, scaled) >= hidden:
            raise ConfigError(f"split_outliers={outliers} / split_inputs={ins} / scale_inputs={scaled} must be below "
                              f"{up}'s widths {width} / {hidden}")  # fmt: skip
        if up not in amax:
            continue  # the block never ran on the calibration data
        if outliers:
            ch = _widest(amax[down], outliers)
            layers[up].split_out, layers[down].split_in, layers[down].split_rows = ch, ch, True
            chosen["outliers"][down] = ch.tolist()
        if ins:
            ch = _widest(amax[up], ins)
            layers[up].split_in, layers[up].split_rows = ch, False
            chosen["inputs"][up] = ch.tolist()
        if scaled:
            factors, wide = _scales(amax[up], scaled)
            if wide:  # none wider than SCALE_TO x the median: nothing to scale
                layers[up].in_scale, chosen["scaled"][up] = factors, wide
    return chosen


def _scales(amax: torch.Tensor, k: int) -> tuple[torch.Tensor, list[int]]:
    """Per input channel: s = max|x_c| / (SCALE_TO · median channel max) for the ``k`` widest (where above 1), 1
    for the rest; and the channels scaled."""
    s = torch.ones_like(amax, dtype=torch.float32)
    median = float(amax.median())
    ch = [int(c) for c in _widest(amax, k) if median > 0 and float(amax[c]) > SCALE_TO * median]
    for c in ch:
        s[c] = float(amax[c]) / (SCALE_TO * median)
    return s, ch


def check_dynamic(model: nn.Module, layers: dict[str, Any]) -> None:
    """ConfigError unless dynamic int8 of ``layers`` has an outlet: linear layers only (ONNX Runtime's dynamic
    kernels run MatMul and Attention) of an encoder whose fused graph the exporter writes (:func:`fused_encoder`;
    the archive and ``export_onnx`` take it). Checked before anything changes."""
    wrong = [f"{n} ({type(m).__name__})" for n, m in layers.items() if not isinstance(m, nn.Linear)]
    if wrong:
        raise ConfigError(f"calibration='dynamic' quantizes linear layers (ONNX Runtime's dynamic int8 runs MatMul "
                          f"and Attention); {wrong[0]} is not one: use calibration='minmax' or skip it with "
                          f"overrides={{{wrong[0].split(' ')[0]!r}: None}}")  # fmt: skip
    split = split_trio(model, layers)
    if split is not None:
        raise ConfigError(f"{split[0]} is quantized without {split[1]}: dynamic int8 fuses a layer's query, key and "
                          f"value into one Attention, so quantize all three or none (skip {split[0]} too with "
                          "overrides, or none of them)")  # fmt: skip
    if layers and not fused_encoder(model):
        raise ConfigError("calibration='dynamic' is written as ONNX Runtime's fused transformer graph and needs a "
                          "Hugging Face BERT-style sentence encoder (deepslim.models.hf, eager attention, no token "
                          "merging); use calibration='minmax' (or 'auto') for this model")  # fmt: skip


def attention_trios(model: nn.Module) -> tuple[tuple[str, str, str], ...]:
    """The (query, key, value) linear layers of each of ``model``'s attentions: the three ``nn.Linear`` attributes
    ``query``/``key``/``value`` of one module (a BERT-style self-attention), which ONNX Runtime fuses into one
    Attention kernel, quantized or not. The one rule for dynamic int8's refusal, its export and the search's ties."""
    found = []
    for name, m in model.named_modules():
        trio = tuple(f"{name}.{p}" if name else p for p in ("query", "key", "value")
                     if isinstance(getattr(m, p, None), nn.Linear))  # fmt: skip
        if len(trio) == 3:
            found.append((trio[0], trio[1], trio[2]))
    return tuple(found)


def split_trio(model: nn.Module, layers: Iterable[str]) -> tuple[str, str] | None:
    """(a quantized layer, a float one) of the first attention whose query, key and value ``layers`` hold some but
    not all of (:func:`attention_trios`); None when every trio is whole."""
    names = set(layers)
    for trio in attention_trios(model):
        inside = [t for t in trio if t in names]
        if 0 < len(inside) < 3:
            return inside[0], next(t for t in trio if t not in names)
    return None


def gelu_blocks(model: nn.Module) -> bool:
    """Whether the encoders' feed-forward activation is exact GELU (``hidden_act='gelu'``), which ONNX Runtime fuses
    into the (MatMul, BiasGelu, MatMul) block whose channels the exporter splits or scales."""
    acts = {getattr(cfg, "hidden_act", "gelu") for m in model.modules() if (cfg := getattr(m, "config", None))
            is not None and hasattr(cfg, "hidden_act")}  # fmt: skip
    return acts <= {"gelu"}


def make_dynamic_(layers: dict[str, Any]) -> None:
    """Mark the quantized ``layers`` dynamic (checked first by :func:`check_dynamic`)."""
    for m in layers.values():
        m.dynamic = True


def dynamic_state(m: nn.Module) -> dict[str, Any]:
    """A dynamic layer's state beyond its weights, as plain JSON (for archives): {} for a static layer."""
    if not getattr(m, "dynamic", False):
        return {}
    def plain(key: str) -> Any:
        value = getattr(m, key, None)
        return None if value is None else value.tolist()

    return {"dynamic": True, "split_in": plain("split_in"), "split_rows": bool(getattr(m, "split_rows", False)),
            "split_out": plain("split_out"), "in_scale": plain("in_scale")}  # fmt: skip


def set_dynamic_state(m: nn.Module, state: dict[str, Any]) -> None:
    """Restore :func:`dynamic_state` on a quantized layer (rebuilt from a file); ValueError when a channel list or
    the scales do not fit the layer's weight (a malformed or foreign record)."""
    if not state.get("dynamic"):
        return
    weight = getattr(m, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"a dynamic int8 record on a {type(m).__name__}, which has no (out, in) weight")
    width = {"split_in": weight.shape[1], "split_out": weight.shape[0]}
    for key, n in width.items():
        value = _channels(state.get(key), n, key)
        setattr(m, key, None if value is None else torch.tensor(value, dtype=torch.long))
    scale = state.get("in_scale")
    if scale is not None and not (isinstance(scale, list) and len(scale) == weight.shape[1] and all(
            isinstance(v, float) and v > 0 for v in scale)):  # fmt: skip
        raise ValueError(f"in_scale holds {len(scale) if isinstance(scale, list) else scale!r} values, not "
                         f"{weight.shape[1]} positive scales (one per input channel, outside the weight's range)")
    setattr(m, "in_scale", None if scale is None else torch.tensor(scale, dtype=torch.float32))  # noqa: B010
    setattr(m, "split_rows", bool(state.get("split_rows")))  # noqa: B010
    setattr(m, "dynamic", True)  # noqa: B010
