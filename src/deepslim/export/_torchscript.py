"""int8 transformer encoders that keep ONNX Runtime's fused attention: TorchScript export, fusion, then int8.

ONNX Runtime runs BERT-style encoders fastest through its own kernels (``Attention``, ``SkipLayerNormalization``,
``BiasGelu``, ``EmbedLayerNormalization``), which its transformer optimizer builds by recognising the eager attention
pattern (MatMul, Softmax, MatMul with the mask added) in the graph. The dynamo exporter writes that pattern in a form
the optimizer does not recognise here, so the fusion — and most of the int8 gain — is lost; the TorchScript exporter
(``dynamo=False``) keeps it. Measured on all-MiniLM-L6-v2 before deepslim touched it: fusion + per-channel dynamic
int8 ran 2.43× faster than ORT fp32 at mean cosine 0.993, plain dynamic int8 1.9× at 0.968 (issue 17).

:func:`export_fused_int8` writes the fused graph with per-channel dynamic int8 weights (activations quantized per
batch at run time by ORT's integer kernels), checks ONNX Runtime against PyTorch on the given inputs, and leaves the
projections that cost the most fidelity in fp32 until the mean cosine reaches ``min_cosine`` (``keep_float``
feed-forward output projections at most, the first layers first: their inputs are GELU outputs with the widest
ranges; on all-MiniLM-L6-v2, keeping the last five in fp32 took the mean cosine from 0.9930 to 0.9945, adding the
first layer's to 0.9959 and the minimum from 0.985 to 0.993). The file is written atomically; a file that stays
below the target is an ExportError, never a file.

The ordinary verbs (``quantize_`` with dynamic int8, then ``export_onnx``; :mod:`deepslim.export._dynamic_int8`) run
this module's ``_prepare`` and ``_quantize`` too: where the two overlap — embeddings kept fp32, no search, no
smoothing, the same outlier channels — they write the same graph (tested, ``test_fused_int8_ordinary_path.py``).
:func:`export_fused_int8` is not a wrapper over them because the rest has no ordinary-verb form: (1) int8 embedding
tables (ORT's ``QEmbedLayerNormalization``), its default, where ``quantize_`` has no int8 ``nn.Embedding``; (2)
SmoothQuant on the fused graph, from ONNX Runtime's activation statistics; (3) the search, whose trials re-quantize
one prepared graph where the verbs would export and fuse the model again per trial (13–14 CPU-s each on
all-MiniLM-L6-v2), and whose target is the cosine to the fp32 model, not parity with a quantized one; (4) any module
ORT fuses given ``num_heads``/``hidden_size`` (an ids-only wrapper, a model that is not a ``SentenceEncoder``), where
dynamic ``quantize_`` takes sentence encoders only; (5) its input names (``input_ids``, ``attention_mask``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepslim._io import atomic_path
from deepslim.errors import ConfigError, DeepSlimError, ExportError
from deepslim.export import _mixed_int8 as mixed
from deepslim.export._mixed_int8 import FloatSelection, FusedInt8Config

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FusedInt8Sensitivity:
    """One projection's row of the fused int8 search's sensitivity table: the fidelity of the int8 file with only it
    added in fp32 (to the set already fp32), measured against PyTorch on the check inputs."""

    layer: str  # the PyTorch module name (a FusedInt8Config.float_layers entry)
    cosine_mean: float
    cosine_min: float
    gain: float  # cosine_mean minus that of the file without it
    weights: int  # its weight elements: what keeping it fp32 costs, roughly, in time (1 for the embeddings' tables)
    gain_per_mweight: float  # gain per million fp32 weight elements: the search's order, largest first

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON (the keys of sessions 6–7's dict rows)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FusedInt8Result:
    """The written file, ORT's fused operators, which MatMuls stayed fp32, and the parity with PyTorch."""

    path: Path
    fused_ops: dict[str, int]
    float_nodes: tuple[str, ...] = ()
    cosine_mean: float = 0.0
    cosine_min: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    smoothed: int = 0  # feed-forward output projections with SmoothQuant scaling
    config: FusedInt8Config | None = None  # what was chosen (float_layers, no search): export it again with this
    split_channels: dict[str, list[int]] = field(default_factory=dict)  # outlier channels in fp32, by projection
    sensitivity: tuple[FusedInt8Sensitivity, ...] = ()  # per projection: cosine with only it in fp32, best first


@contextmanager
def step(what: str) -> Iterator[None]:
    """Run one step of writing the file; any exception but deepslim's own becomes an ExportError that names the
    step (ONNX Runtime's optimizer and quantizer raise whatever their code meets: KeyError, AssertionError, ...)."""
    try:
        yield
    except DeepSlimError:
        raise
    except ImportError as exc:  # a package (or one it imports) is not installed: not deepslim's bug
        if not exc.name:
            raise ExportError(f"{what} failed to import a package: {exc}") from exc
        package = exc.name.split(".")[0]
        raise ExportError(f"{what} needs the {package} package, which is not installed ({exc}): pip install "
                          f"{package}") from exc  # fmt: skip
    except Exception as exc:  # noqa: BLE001  (re-raised as one error type, with the step and the cause)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"{what} failed: {type(exc).__name__}: {first} (a bug to report, with the model)") from exc


def _export_fp32(model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, names: list[str]) -> None:
    dynamic = {n: {0: "batch"} for n in names} | {"output": {0: "batch"}}
    with torch.no_grad(), step("the TorchScript ONNX export (opset 17)"):
        torch.onnx.export(model.eval(), inputs, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=["output"], dynamic_axes=dynamic)  # fmt: skip


def _fuse(fp32: Path, out: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    with step("ONNX Runtime's transformer optimizer (optimize_model, model_type='bert')"):
        from onnxruntime.transformers import optimizer

        opt = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
        opt.save_model_to_file(str(out))
        return {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}


def _ffn_outputs(fused: Path) -> list[str]:
    """Names of the MatMuls that read a GELU's output, directly or smoothed (feed-forward down projections), in
    graph order."""
    import onnx

    graph = onnx.load(str(fused), load_external_data=False).graph
    gelu_out = {o for n in graph.node if "Gelu" in n.op_type for o in n.output}
    gelu_out |= {o for n in graph.node if n.op_type == "Mul" and n.input[0] in gelu_out for o in n.output}  # smoothed
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0] in gelu_out]


def _smooth(fused: Path, out: Path, feeds: list[dict[str, np.ndarray]], alpha: float) -> int:
    """SmoothQuant (Xiao et al., ICML 2023) for the feed-forward output projections: their inputs, GELU outputs,
    have a few channels far wider than the rest, which per-tensor dynamic int8 of the activations rounds away. Each
    input channel j is divided by s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) (a Mul before the MatMul) and the
    weight's row j multiplied by it: the same product, with activation ranges moved into the per-channel weights.
    Returns how many projections were smoothed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fused))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    ffn = set(_ffn_outputs(fused))
    targets = {n.name: n for n in graph.node if n.name in ffn and n.input[1] in inits}
    stats = mixed.channel_max(fused, [n.input[0] for n in targets.values()], feeds)
    before: dict[str, list[Any]] = {}
    for node in targets.values():
        w = numpy_helper.to_array(inits[node.input[1]])  # (K, N): rows are input channels
        s = np.clip(stats[node.input[0]] ** alpha / np.clip(np.abs(w).max(1), 1e-8, None) ** (1 - alpha),
                    1e-5, None).astype(np.float32)  # fmt: skip
        inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32),
                                                              node.input[1]))  # fmt: skip
        graph.initializer.append(numpy_helper.from_array(1.0 / s, f"{node.name}_smooth"))
        smoothed = f"{node.input[0]}_{node.name}_smoothed"
        before[node.name] = [onnx.helper.make_node("Mul", [node.input[0], f"{node.name}_smooth"], [smoothed],
                                                   name=f"{node.name}_smooth")]  # fmt: skip
        node.input[0] = smoothed
    mixed.splice(graph, before=before)
    onnx.save(model, str(out))
    return len(targets)


def _quantize(fused: Path, out: Path, exclude: list[str], *, only: list[str] | None = None,
              per_channel: bool = True) -> None:  # fmt: skip
    """ONNX Runtime's dynamic int8 of ``fused``: s8 symmetric weights, u8 activations per batch; every quantizable
    node but ``exclude``, or exactly ``only``."""
    with step("ONNX Runtime's dynamic int8 quantizer (quantize_dynamic)"):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # the fused graph holds com.microsoft operators that ONNX shape inference cannot type: say they are float
        quantize_dynamic(str(fused), str(out), per_channel=per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=exclude, nodes_to_quantize=only,
                         extra_options={"DefaultTensorType": 1})  # fmt: skip
    from deepslim.export._dynamic_int8 import plain_layer_norms

    with step("rewriting SkipLayerNormalization as Add + LayerNormalization"):
        plain_layer_norms(out)  # ORT 1.32's CPU SkipLayerNormalization: ~3x the time of Add + LayerNormalization


def _run(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    got, ref = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    num = (got * ref).sum(1)
    return num / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)


Feeds = list[dict[str, np.ndarray]]


def _legacy(config: FusedInt8Config | None, min_cosine: float | None, keep_float: int | None,
            smooth: float | None) -> FusedInt8Config:  # fmt: skip
    """The config, or one built from the keyword arguments of sessions 4–6 (ffn_first order, their defaults)."""
    if config is not None:
        if (min_cosine, keep_float, smooth) != (None, None, None):
            raise ConfigError("pass either config=FusedInt8Config(...) or min_cosine/keep_float/smooth, not both")
        return config
    return FusedInt8Config(min_cosine=0.995 if min_cosine is None else min_cosine, select=FloatSelection.FFN_OUTPUTS,
                           max_float=6 if keep_float is None else keep_float, smooth=smooth or 0.0)  # fmt: skip


class _Trials:
    """Quantize the prepared fp32 graph with a set of projections left fp32, and score it against PyTorch."""

    def __init__(self, fused: Path, work: Path, feeds: Feeds, ref: np.ndarray):
        self.fused, self.work, self.feeds, self.ref = fused, work, feeds, ref
        self.layers = mixed.layer_nodes(fused)
        self.keep = mixed.outlier_nodes(fused)  # the outlier path is fp32 by construction
        self.attempts: list[dict[str, Any]] = []

    def score(self, float_layers: list[str], record: bool = True) -> tuple[Path, np.ndarray]:
        trial = self.work / f"int8-{len(self.attempts)}-{len(float_layers)}.onnx"
        _quantize(self.fused, trial, [self.layers[n] for n in float_layers] + self.keep)
        cos = _cosines(_run(trial, self.feeds), self.ref)
        if record:
            self.attempts.append({"float_layers": list(float_layers), "float_nodes": [self.layers[n] for n in
                                  float_layers], "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())})
            log.info("fused int8 with %d fp32 projections: cosine mean %.4f min %.4f", len(float_layers), cos.mean(),
                     cos.min())  # fmt: skip
        return trial, cos

    def order(self, select: FloatSelection, chosen: list[str],
              base: float) -> tuple[list[str], tuple[FusedInt8Sensitivity, ...]]:  # fmt: skip
        """The projections to add, best first: by sensitivity (cosine gained with only it fp32, per fp32 weight
        element) or the feed-forward output projections in graph order."""
        rest = [n for n in self.layers if n not in chosen]
        if select is FloatSelection.FFN_OUTPUTS:
            ffn = set(_ffn_outputs(self.fused))
            return [n for n in rest if self.layers[n] in ffn], ()
        sizes = mixed.weight_sizes(self.fused, self.layers)
        table: list[FusedInt8Sensitivity] = []
        for name in rest:
            cos = self.score([*chosen, name], record=False)[1]
            gain = float(cos.mean()) - base
            table.append(FusedInt8Sensitivity(layer=name, cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
                                              gain=gain, weights=sizes[name],
                                              gain_per_mweight=gain / sizes[name] * 1e6))  # fmt: skip
        table.sort(key=lambda r: -r.gain_per_mweight)
        return [r.layer for r in table if r.gain > 0], tuple(table)


Inputs = list[tuple[torch.Tensor, ...]]


def _setup(model: nn.Module, example_input: tuple[torch.Tensor, ...], check_inputs: Inputs | None,
           calib_inputs: Inputs | None, input_names: list[str] | None, num_heads: int,
           hidden_size: int) -> tuple[list[str], tuple[int, int], Feeds, Feeds, np.ndarray]:  # fmt: skip
    """Input names, (heads, width), check and calibration feeds, and PyTorch's outputs on the check inputs."""
    default = ["input_ids", "attention_mask"] if len(example_input) <= 2 else [f"input_{i}" for i in range(9)]
    names = input_names or default[: len(example_input)]
    hf = getattr(getattr(model, "encoder", model), "config", None)  # a Hugging Face encoder's: heads, width
    heads_width = (num_heads or int(getattr(hf, "num_attention_heads", 0)), hidden_size or int(getattr(hf,
                   "hidden_size", 0)))  # fmt: skip
    feeds = [{n: t.numpy() for n, t in zip(names, x, strict=True)} for x in (check_inputs or [example_input])]
    calib = [{n: t.numpy() for n, t in zip(names, x, strict=True)} for x in calib_inputs] if calib_inputs else feeds
    with torch.no_grad():
        ref = torch.cat([model.eval()(*x) for x in (check_inputs or [example_input])]).numpy()
    return names, heads_width, feeds, calib, ref


def _prepare(model: nn.Module, example_input: tuple[torch.Tensor, ...], names: list[str], work: Path,
             heads_width: tuple[int, int], config: FusedInt8Config, calib: Feeds,
             given: tuple[mixed.Channels, mixed.Channels, dict[str, list[float]]] | None = None,
             ) -> tuple[Path, dict[str, int], int, dict[str, list[int]]]:  # fmt: skip
    """The fp32 graph the int8 file is made from: exported, fused, optionally smoothed and outlier-split — the
    ``config.split_*`` widest channels on ``calib``, or the ``given`` (outliers by down projection, inputs by up
    projection, input scales by up projection: what a dynamic-quantized model chose, see
    ``export._dynamic_int8``)."""
    fp32, fused = work / "fp32.onnx", work / "fused.onnx"
    _export_fp32(model, example_input, fp32, names)
    fused_ops = _fuse(fp32, fused, *heads_width)
    if not fused_ops.get("Attention"):
        raise ExportError(f"ONNX Runtime's transformer optimizer fused no attention in {type(model).__name__} "
                          f"(fused: {fused_ops}); this export is for BERT-style encoders")  # fmt: skip
    smoothed = _smooth(fused, work / "smoothed.onnx", calib, config.smooth) if config.smooth > 0 else 0
    if smoothed:
        fused = work / "smoothed.onnx"
    outliers, inputs, scales = given or (None, None, {})
    with step("splitting and scaling the outlier channels of the fused graph"):
        split = mixed.split_outliers(fused, work / "split.onnx", calib, config.split_outliers, outliers)
        if split:
            fused = work / "split.onnx"
        split_in = mixed.split_inputs(fused, work / "split_in.onnx", calib, config.split_inputs, inputs)
        if split_in:
            fused = work / "split_in.onnx"
        scaled = mixed.scale_inputs(fused, work / "scaled.onnx", scales) if scales else {}
    return (work / "scaled.onnx" if scales else fused), fused_ops, smoothed, split | split_in | scaled


def export_fused_int8(model: nn.Module, path: str | os.PathLike[str], *, example_input: tuple[torch.Tensor, ...],
                      check_inputs: list[tuple[torch.Tensor, ...]] | None = None,
                      calib_inputs: list[tuple[torch.Tensor, ...]] | None = None, num_heads: int = 0,
                      hidden_size: int = 0, config: FusedInt8Config | None = None, min_cosine: float | None = None,
                      keep_float: int | None = None, smooth: float | None = None,
                      input_names: list[str] | None = None) -> FusedInt8Result:  # fmt: skip
    """Write ``model`` (a BERT-style encoder) as a fused, per-channel dynamic int8 ONNX file at ``path``.

    ``example_input``: the inputs the export traces (``(input_ids, attention_mask)``); ``check_inputs``: batches
    on which ONNX Runtime is compared with PyTorch (default: the example); ``calib_inputs``: batches for the
    activation statistics of outlier splitting and SmoothQuant (default: the check inputs). ``num_heads`` /
    ``hidden_size`` 0: from the Hugging Face config of a :class:`~deepslim.models.hf.SentenceEncoder`.
    ``config`` (:class:`FusedInt8Config`) says what stays fp32; without it, ``min_cosine`` (0.995), ``keep_float``
    (6) and ``smooth`` (0) keep sessions 4–6's behaviour: feed-forward output projections in fp32, first layer
    first, until the mean cosine reaches ``min_cosine``. A target never reached is an ExportError and no file.
    The result's ``config`` holds the chosen set (no search): exporting with it writes the same graph.
    """
    config = _legacy(config, min_cosine, keep_float, smooth)
    names, heads_width, feeds, calib, ref = _setup(model, example_input, check_inputs, calib_inputs, input_names,
                                                   num_heads, hidden_size)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fused, fused_ops, smoothed, split = _prepare(model, example_input, names, work, heads_width, config, calib)
        trials = _Trials(fused, work, feeds, ref)
        chosen = mixed.resolve(config.float_layers, trials.layers)
        trial, cos = trials.score(chosen)
        table: tuple[FusedInt8Sensitivity, ...] = ()
        if cos.mean() < config.min_cosine:
            order, table = trials.order(config.select, chosen, float(cos.mean()))
            for name in order[: max(0, config.max_float - len(chosen))]:
                chosen.append(name)
                trial, cos = trials.score(chosen)
                if cos.mean() >= config.min_cosine:
                    break
        if cos.mean() < config.min_cosine:
            best = max(trials.attempts, key=lambda a: a["cosine_mean"])
            raise ExportError(f"fused int8 reaches mean cosine {best['cosine_mean']:.4f} < {config.min_cosine} even "
                              f"with {len(best['float_nodes'])} projections in fp32; lower min_cosine, raise "
                              f"max_float (keep_float) or split outlier channels")  # fmt: skip
        with atomic_path(path) as out:
            out.write_bytes(trial.read_bytes())
    chosen_config = FusedInt8Config(**{**config.to_dict(), "float_layers": tuple(chosen), "min_cosine": 0.0})
    return FusedInt8Result(Path(path), fused_ops, tuple(trials.layers[n] for n in chosen), float(cos.mean()),
                           float(cos.min()), trials.attempts, smoothed, chosen_config, split, table)  # fmt: skip


def fused_int8_sensitivity(model: nn.Module, *, example_input: tuple[torch.Tensor, ...],
                           check_inputs: list[tuple[torch.Tensor, ...]] | None = None,
                           calib_inputs: list[tuple[torch.Tensor, ...]] | None = None, num_heads: int = 0,
                           hidden_size: int = 0, config: FusedInt8Config | None = None,
                           input_names: list[str] | None = None) -> tuple[FusedInt8Sensitivity, ...]:  # fmt: skip
    """The sensitivity table of :func:`export_fused_int8`'s search, best first, without writing a file: for every
    projection not in ``config.float_layers``, a :class:`FusedInt8Sensitivity` (the mean/min cosine to PyTorch on
    ``check_inputs`` with only it added in fp32, its gain over none, its weight count and the gain per million fp32
    weights: the search's order; the cosine/latency frontier is the file with the first n of them in fp32)."""
    config = config or FusedInt8Config()
    names, heads_width, feeds, calib, ref = _setup(model, example_input, check_inputs, calib_inputs, input_names,
                                                   num_heads, hidden_size)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        fused = _prepare(model, example_input, names, Path(tmp), heads_width, config, calib)[0]
        trials = _Trials(fused, Path(tmp), feeds, ref)
        chosen = mixed.resolve(config.float_layers, trials.layers)
        base = float(trials.score(chosen, record=False)[1].mean())
        return trials.order(FloatSelection.GAIN_PER_WEIGHT, chosen, base)[1]
