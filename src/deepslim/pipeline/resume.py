"""Resuming an interrupted run from its last finished stage instead of training everything again.

After every stage the run writes ``checkpoints/NN-kind.pt``: the model's state dict, the random number generator's
state, the metrics and artifacts so far, and the fingerprint of the recipe as run. The file holds only tensors,
numbers and strings, so it loads with ``torch.load(weights_only=True)`` (no pickled code). To resume, the input
model is rebuilt and every finished technique stage is replayed *without its training* on the weights it saw
(which gives the same masks, codebooks, quantizers and layer shapes), then the last checkpoint's weights and random
state are loaded and the run goes on with the next stage. Checkpoints are removed when the run completes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deepslim._io import atomic_path
from deepslim.compress.prune.schedule import Schedule, apply_masks_
from deepslim.errors import ConfigError
from deepslim.pipeline.stages import TechniqueStage, TrainStage

if TYPE_CHECKING:
    from deepslim.pipeline.run import RunContext

CHECKPOINTS = "checkpoints"
_FORMAT = "deepslim-checkpoint"
_STEM = re.compile(r"(\d\d)-[a-z0-9_]+")


def save_checkpoint(ctx: RunContext, index: int, kind: str) -> Path:
    """Write the checkpoint after stage ``index`` (0: the input model)."""
    from deepslim.pipeline.run import _json_default

    doc = {"format": _FORMAT, "version": 1, "fingerprint": ctx.fingerprint, "index": index,
           "state": ctx.model.state_dict(), "rng": torch.get_rng_state(),
           "metrics": json.dumps(ctx.metrics, default=_json_default),
           "artifacts": json.dumps(ctx.artifacts)}  # fmt: skip
    dest = ctx.work / CHECKPOINTS / f"{index:02d}-{kind}.pt"
    dest.parent.mkdir(exist_ok=True)
    with atomic_path(dest) as tmp:
        torch.save(doc, tmp)
    return dest


def drop_checkpoints(work: Path) -> None:
    """A complete run needs no checkpoints."""
    shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"checkpoint {path} cannot be read ({type(exc).__name__}); run again with --overwrite") \
            from None  # fmt: skip
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ConfigError(f"{path} is not a deepslim checkpoint; run again with --overwrite")
    return doc


def _checkpoints(out: Path) -> dict[int, Path]:
    found = {}
    for p in sorted((out / CHECKPOINTS).glob("*.pt")):
        m = _STEM.fullmatch(p.stem)
        if m:
            found[int(m.group(1))] = p
    return found


def restore(ctx: RunContext, out: Path) -> int:
    """Bring ``ctx`` to where the unfinished run in ``out`` stopped; return the index of the next stage to run
    (1 when ``out`` holds nothing yet: the run starts from the beginning)."""
    if not out.is_dir() or not any(out.iterdir()):
        return 1
    status = json.loads((out / "metrics.json").read_text()).get("status")
    if status == "complete":
        raise ConfigError(f"{out} holds a complete run: nothing to resume (pass --overwrite to run it again)")
    found = _checkpoints(out)
    last = max((i for i in found if all(j in found for j in range(i + 1))), default=None)
    if last is None:
        raise ConfigError(f"{out} holds no checkpoint to resume from (the run stopped before its first stage, or "
                          "an older deepslim wrote it); run it again with --overwrite")  # fmt: skip
    docs = [_load(found[i]) for i in range(last + 1)]
    if docs[-1]["fingerprint"] != ctx.fingerprint:
        raise ConfigError(f"{out} was run with another recipe or other settings (model, data, device, seed); resume "
                          "it with the same ones, or run again with --overwrite")  # fmt: skip
    _replay(ctx, docs)
    ctx.metrics = json.loads(docs[-1]["metrics"])
    ctx.artifacts = json.loads(docs[-1]["artifacts"])
    _copy_run(out, ctx.work, last)
    return last + 1


def _replay(ctx: RunContext, docs: list[dict[str, Any]]) -> None:
    """Rebuild the model after the last checkpointed stage: each finished technique is applied again, without its
    training, to the weights it was applied to, and the checkpointed weights are loaded after it."""
    model = ctx.model
    for index, stage in enumerate(ctx.recipe.stages[: len(docs) - 1], start=1):
        if isinstance(stage, TechniqueStage):
            before = docs[index - 1]
            model.load_state_dict(before["state"])
            torch.set_rng_state(before["rng"])
            if stage.schedule is Schedule.ONESHOT:
                stage.spec.apply(model, stage.config, example_input=ctx.data.example_input,
                                 calib_data=ctx.data.calib, data=ctx.data)  # fmt: skip
            else:  # a schedule ends with the masks of its final sparsity
                apply_masks_(model, stage.config)  # type: ignore[arg-type]
        if isinstance(stage, TrainStage) and stage.kind == "train":
            ctx.teacher = copy.deepcopy(model)
            ctx.teacher.load_state_dict(docs[index]["state"])
    model.load_state_dict(docs[-1]["state"])
    torch.set_rng_state(docs[-1]["rng"])


def _link_or_copy(src: str, dest: str) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _copy_run(out: Path, work: Path, last: int) -> None:
    """The unfinished run's files, up to stage ``last``, into the new work directory."""
    shutil.copytree(out, work, dirs_exist_ok=True, copy_function=_link_or_copy)
    for sub in ("stages", CHECKPOINTS):
        for p in (work / sub).glob("*"):
            m = _STEM.match(p.name)
            if m and int(m.group(1)) > last:
                p.unlink()


def salvage(work: Path, out: Path) -> None:
    """After a resumed run fails again: move what it finished into the unfinished run in ``out`` (file by file,
    each atomically; metrics.json last), so the next resume starts from there."""
    files = sorted((p for p in work.rglob("*") if p.is_file()), key=lambda p: p.name == "metrics.json")
    for p in files:
        dest = out / p.relative_to(work)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, dest)
