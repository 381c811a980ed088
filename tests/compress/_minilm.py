"""The real pretrained all-MiniLM-L6-v2 and a tokenized batch, shared by the token-reduction tests (skips when the
transformers package or the weights are not installed)."""

import pytest

import deepslim as ds


def minilm_batch(texts, seq_len=32):
    """(model in eval mode, ids, mask) for ``texts`` padded to ``seq_len`` tokens."""
    pytest.importorskip("transformers", reason="needs the transformers package")
    hf = pytest.importorskip("deepslim.models.hf")
    try:
        model = ds.load_model("all-minilm-l6-v2").eval()
    except ds.ModelLoadError as exc:
        pytest.skip(f"all-MiniLM-L6-v2 is not installed: {exc}")
    ids, mask = hf.tokenize(model, texts, seq_len=seq_len)
    return model, ids, mask
