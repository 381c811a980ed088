"""Deep Compression's relative-index coding of a sparse tensor's positions.

Han et al., "Deep Compression", ICLR 2016, §2 and Fig. 2: instead of absolute positions, store for each nonzero
the number of zeros skipped since the previous one, in a fixed ``index_bits``-bit field. A gap that does not fit is
bridged by *filler* entries. Here a filler is the reserved gap symbol ``2^index_bits − 1``: it advances the
position by that many zeros and carries no value (the paper stores a filler as a zero weight instead; a symbol that
needs no value is the same idea without spending a value code on it). Real entries use gaps ``0 … 2^b − 2``.

With ``b`` bits the filler symbol is ``F = 2^b − 1``; a nonzero at distance ``d`` zeros from the previous one is
written as ``d // F`` fillers and then the gap ``d % F``.
"""

from __future__ import annotations

import numpy as np

from deepslim.errors import ArchiveError

MIN_INDEX_BITS, MAX_INDEX_BITS = 2, 16


def encode_positions(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """The gap stream (fillers included) for strictly increasing ``positions`` of the nonzeros."""
    if not MIN_INDEX_BITS <= index_bits <= MAX_INDEX_BITS:
        raise ValueError(f"index_bits must be in [{MIN_INDEX_BITS}, {MAX_INDEX_BITS}], got {index_bits}")
    positions = np.asarray(positions, dtype=np.int64)
    filler = (1 << index_bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1  # zeros skipped before each nonzero
    fillers = gaps // filler
    out = np.full(len(positions) + int(fillers.sum()), filler, dtype=np.int64)
    # each nonzero's own entry comes after its fillers
    real_at = np.cumsum(fillers + 1) - 1
    out[real_at] = gaps % filler
    return out


def decode_positions(stream: np.ndarray, index_bits: int, size: int) -> np.ndarray:
    """Positions of the nonzeros encoded in ``stream``; ArchiveError if they leave a tensor of ``size`` elements."""
    stream = np.asarray(stream, dtype=np.int64)
    filler = (1 << index_bits) - 1
    if len(stream) and (stream.min() < 0 or stream.max() > filler):
        raise ArchiveError(f"sparse index stream holds a gap outside 0..{filler}")
    real = stream != filler
    steps = np.where(real, stream + 1, filler)
    positions = np.cumsum(steps)[real] - 1
    if len(positions) and positions[-1] >= size:
        raise ArchiveError(f"sparse index stream points past the end of its tensor ({positions[-1]} >= {size})")
    return positions


def stream_length(positions: np.ndarray, index_bits: int) -> int:
    """How many entries (nonzeros plus fillers) the stream for ``positions`` has — without building it."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    return len(positions) + int((gaps // ((1 << index_bits) - 1)).sum())
