"""all-MiniLM-L6-v2's ``.dsz`` archive after dynamic int8 (issue 17): bytes on disk before and after dynamic layers
were stored as int8 codes, and whether the reloaded model computes what was saved.

``quantize_(model, LinearQuantConfig(bits=8), calib_data=load_data("sentences").calib)`` (``auto`` resolves to
dynamic int8: 36 linear layers, fp32 GELU outlier channels, scaled input channels), then ``save_model(model,
"m.dsz")`` and ``load_model("m.dsz")`` — what ``deepslim quantize all-minilm-l6-v2 --data sentences -o m.dsz`` and a
later load do. "Before" is the archive layout of session 9 (a dynamic layer's float weight stored raw), written by
the same encoder with the codes left out (the layout tests check it byte for byte against session 9's writer).
Fidelity: the reloaded model's embeddings of the 220 evaluation sentences against the saved model's (and the fp32
model's). Light: one quantization, two encodes, two loads.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 5 python benchmarks/int8_archive.py
        [--json benchmarks/results/int8_archive.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import deepslim as ds
from _common import result_header, save_json
from deepslim.compress.coding import archive


def _meta_build_workaround() -> bool:
    """all-minilm-l6-v2 must build on the meta device (encode's layer check, decode's memory check); transformers'
    ``from_pretrained`` refuses it there. Until deepslim.models.hf builds from the config on meta, build so here;
    True when that was needed."""
    try:
        with torch.device("meta"):
            ds.create_model("all-minilm-l6-v2")
        return False
    except ds.ConfigError:
        pass
    import deepslim.models.hf as hf

    real = hf._ADAPTERS["bert"]

    def meta_aware(path: Path, raw: dict[str, Any]) -> torch.nn.Module:
        if not torch.empty(()).is_meta:
            return real(path, raw)
        tf = hf._transformers()
        config = tf.BertConfig.from_pretrained(str(path), local_files_only=True)
        config._attn_implementation = "eager"
        return hf.SentenceEncoder(tf.BertModel(config, add_pooling_layer=False).eval(),
                                  max_positions=int(raw.get("max_position_embeddings", 512)))  # fmt: skip

    hf._ADAPTERS["bert"] = meta_aware
    return True


@contextlib.contextmanager
def float_layout() -> Iterator[None]:
    """While open, ``save_model`` writes the archive's tensors as session 9 did: dynamic weights in float, raw
    (version 1: no int8 codes to decode). Shared with archive_decode.py."""
    real = archive._inference_tensors

    def tensors(model: torch.nn.Module) -> list[Any]:
        items = real(model)
        for item in items:
            if item.fp32 is not None:
                item.linear = item.fp32 = None
        return items

    archive._inference_tensors = tensors
    try:
        yield
    finally:
        archive._inference_tensors = real


def _embed(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(ids[i : i + 32], mask[i : i + 32]) for i in range(0, len(ids), 32)])


def _archive(model: torch.nn.Module, dest: Path, example: Any, ref: dict[str, torch.Tensor],
             data: ds.DataBundle) -> dict[str, Any]:  # fmt: skip
    """Save ``model`` at ``dest``, load it back, and account for both."""
    c0 = time.process_time()
    ds.save_model(model, dest, example_input=example)
    encode_s = time.process_time() - c0
    blob = dest.read_bytes()
    info = ds.archive_info(blob)
    dynamic = {f"{n}.weight" for n, m in model.named_modules() if getattr(m, "dynamic", False)}
    weights = [t for t in info.tensors if t.name in dynamic]
    c0 = time.process_time()
    loaded = ds.load_model(str(dest)).eval()
    load_s = time.process_time() - c0
    ids, mask = getattr(data.test.dataset, "ids"), getattr(data.test.dataset, "mask")  # noqa: B009
    got = _embed(loaded, ids, mask)
    to_saved = torch.nn.functional.cosine_similarity(got, ref["saved"], dim=1)
    to_fp32 = torch.nn.functional.cosine_similarity(got, ref["fp32"], dim=1)
    return {"bytes": len(blob), "version": info.version, "by_part": info.by_part,
            "dynamic_weight_bytes": sum(t.total for t in weights),
            "dynamic_weight_fp32_bytes": sum(4 * math.prod(t.shape) for t in weights),
            "encode_cpu_s": round(encode_s, 2), "load_cpu_s": round(load_s, 2),
            "reloaded_equals_saved": bool(torch.equal(got, ref["saved"])),
            "reloaded_vs_saved_max_abs": float((got - ref["saved"]).abs().max()),
            "reloaded_vs_saved_cosine_min": float(to_saved.min()),
            "reloaded_vs_fp32_cosine_mean": float(to_fp32.mean()), "reloaded_vs_fp32_cosine_min": float(to_fp32.min())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = result_header("int8_archive", 1)
    result["meta_build_workaround"] = _meta_build_workaround()
    teacher = ds.load_model("all-minilm-l6-v2").eval()
    data = ds.load_data("sentences")
    model = ds.quantize_(copy.deepcopy(teacher), ds.LinearQuantConfig(bits=8), calib_data=data.calib)
    result["calibration"] = ds.quantization_report(model).calibration
    ids, mask = getattr(data.test.dataset, "ids"), getattr(data.test.dataset, "mask")  # noqa: B009
    ref = {"saved": _embed(model, ids, mask), "fp32": _embed(teacher, ids, mask)}
    with tempfile.TemporaryDirectory() as work:
        result["fp32_model_bytes"] = len(ds.encode(teacher))
        with float_layout():
            result["before"] = _archive(model, Path(work) / "before.dsz", data.example_input, ref, data)
        result["after"] = _archive(model, Path(work) / "after.dsz", data.example_input, ref, data)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/results/int8_archive.json")
    args = parser.parse_args()
    result = run(args)
    save_json(result, args.json)
    for k in ("before", "after"):
        r = result[k]
        print(f"{k}: {r['bytes']:,} B (dynamic weights {r['dynamic_weight_bytes']:,} of "
              f"{r['dynamic_weight_fp32_bytes']:,} fp32), reloaded == saved: {r['reloaded_equals_saved']}")


if __name__ == "__main__":
    main()
