"""Fidelity of sentence embeddings to a reference model's: what a compressed encoder must keep to serve search.

- cosine to the reference embedding of the same sentence (mean and worst case);
- nearest-neighbour agreement: how often a sentence's most similar other sentence is the one the reference picks
  (the top-1 result of a semantic search over the set);
- Spearman's rank correlation between the two models' pairwise cosine similarities (the ranking a search
  returns; STS benchmarks score embeddings the same way, Cer et al., SemEval 2017);
- paraphrase retrieval accuracy: how often a sentence's nearest neighbour is its paraphrase, for the model alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.errors import DataError
from deepslim.tasks._base import Task, call_model, get_task


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (as Spearman's coefficient defines them)."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # the last rank each distinct value occupies
    average = ends - (counts.double() - 1) / 2
    return average[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally long vectors (Pearson's correlation of their ranks)."""
    if a.shape != b.shape or a.ndim != 1 or a.numel() < 2:
        raise DataError(f"spearman needs two 1-D tensors of equal length >= 2, got {tuple(a.shape)}, {tuple(b.shape)}")
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _similarities(emb: torch.Tensor) -> torch.Tensor:
    e = F.normalize(emb.double(), dim=-1)
    sim = e @ e.T
    return sim.fill_diagonal_(-float("inf"))  # a sentence is not its own neighbour


def paraphrase_accuracy(emb: torch.Tensor, pairs: Iterable[tuple[int, int]]) -> float:
    """Share of pair members whose nearest other sentence is their paraphrase (both directions count)."""
    nearest = _similarities(emb).argmax(1)
    hits = [int(nearest[i] == j) for a, b in pairs for i, j in ((a, b), (b, a))]
    if not hits:
        raise DataError("paraphrase accuracy needs at least one pair")
    return sum(hits) / len(hits)


def embedding_fidelity(emb: torch.Tensor, reference: torch.Tensor, *,
                       pairs: Sequence[tuple[int, int]] = ()) -> dict[str, float]:  # fmt: skip
    """How closely embeddings (N, H) follow a reference's (N, H') of the same N sentences."""
    if emb.ndim != 2 or reference.ndim != 2 or emb.shape[0] != reference.shape[0] or emb.shape[0] < 3:
        raise DataError(f"fidelity compares embeddings of the same >= 3 sentences, got {tuple(emb.shape)} and "
                        f"{tuple(reference.shape)}")  # fmt: skip
    out: dict[str, float] = {}
    if emb.shape == reference.shape:
        cos = F.cosine_similarity(emb.double(), reference.double(), dim=-1)
        out |= {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    s, r = _similarities(emb), _similarities(reference)
    out["nn_agreement"] = float((s.argmax(1) == r.argmax(1)).double().mean())
    upper = torch.triu_indices(len(s), len(s), offset=1)
    out["spearman"] = spearman(s[upper[0], upper[1]], r[upper[0], upper[1]])
    if pairs:
        out["paraphrase_accuracy"] = paraphrase_accuracy(emb, pairs)
        out["paraphrase_accuracy_reference"] = paraphrase_accuracy(reference, pairs)
    return out


@torch.no_grad()
def embed(model: nn.Module, loader: Iterable[Any], *, task: Task | str | None = "embedding") -> torch.Tensor:
    """The (N, H) embeddings of every batch of ``loader``, in order."""
    task = get_task(task)
    was = model.training
    model.eval()
    try:
        return torch.cat([task.output(call_model(model, task.split(b)[0]), task.split(b)[0]) for b in loader])
    finally:
        model.train(was)


def sentence_fidelity(model: nn.Module, reference: nn.Module | torch.Tensor, data: Any, *,
                      split: str = "test") -> dict[str, float]:  # fmt: skip
    """:func:`embedding_fidelity` of ``model`` against ``reference`` (a model or its precomputed embeddings) on a
    bundle's split; paraphrase accuracy too where the bundle lists pairs (``load_data("sentences")``)."""
    loader = getattr(data, split)
    ref = reference if isinstance(reference, torch.Tensor) else embed(reference, loader)
    pairs = data.info.get("pairs", ()) if split == "test" else ()
    return embedding_fidelity(embed(model, loader), ref, pairs=pairs)
