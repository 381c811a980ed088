"""The sentences set with a user's tokenizer directory: broken files are one-line errors, a vocabulary without
BERT-uncased's word range still gives word-salad texts, and the fidelity of a model read through the bundle."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import deepslim as ds  # noqa: E402
from deepslim.errors import DataError, ModelLoadError  # noqa: E402
from deepslim.models import hf  # noqa: E402
from deepslim.tasks.similarity import embed, sentence_fidelity  # noqa: E402

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat", "park", "red", "blue", "big", "small", "house", "tree"]


def _bert_dir(path, vocab, seed=0):
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab))
    return path


SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_a_small_vocabulary_gives_salad_from_its_own_words_or_refuses_in_one_line(tmp_path):
    words = _bert_dir(tmp_path / "words", SPECIAL + WORDS)
    bundle = ds.load_data("sentences", tokenizer=str(words), train_size=16, salad=0.5)
    salad = hf.load_tokenizer(words)
    texts = ds.data.sentences.word_salad(salad, 5, seed=1)
    assert len(texts) == 5 and all(set(t.split()) <= set(WORDS) for t in texts)  # no special token, no id range
    assert next(iter(bundle.train))["input_ids"].shape[1] == 32
    numbered = _bert_dir(tmp_path / "numbered", SPECIAL + [f"w{i}" for i in range(15)])
    with pytest.raises(DataError, match=r"vocabulary of 20 tokens holds no whole words.*salad=0") as err:
        ds.load_data("sentences", tokenizer=str(numbered), train_size=16)
    assert "\n" not in str(err.value)
    assert len(ds.load_data("sentences", tokenizer=str(numbered), train_size=16, salad=0.0).train.dataset) == 16


def test_broken_tokenizer_files_are_one_line_errors_naming_the_directory(tmp_path):
    cut = _bert_dir(tmp_path / "cut", SPECIAL + WORDS)
    (cut / "vocab.txt").unlink()
    (cut / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    empty = _bert_dir(tmp_path / "empty", SPECIAL + WORDS)
    (empty / "vocab.txt").write_text("")
    for directory in (cut, empty):
        with pytest.raises(ModelLoadError, match=f"tokenizer files in {directory} cannot be read") as err:
            ds.load_data("sentences", tokenizer=str(directory), train_size=4)
        assert "\n" not in str(err.value)


def test_sentence_fidelity_reads_the_test_split_in_order_and_scores_a_model_against_itself(tmp_path):
    model = hf.load_hf(_bert_dir(tmp_path / "a", SPECIAL + WORDS)).eval()
    other = hf.load_hf(_bert_dir(tmp_path / "b", SPECIAL + WORDS, seed=1)).eval()
    bundle = ds.load_data("sentences", tokenizer=str(tmp_path / "a"), train_size=16, batch_size=7)
    ids, mask = bundle.test.dataset.ids, bundle.test.dataset.mask
    with torch.no_grad():
        direct = model(ids, mask)
    assert torch.allclose(embed(model, bundle.test), direct, atol=1e-6)  # every batch, in the loader's order
    same = sentence_fidelity(model, model, bundle)
    assert same["cosine_mean"] == pytest.approx(1.0, abs=1e-6) and same["nn_agreement"] == 1.0
    assert same["paraphrase_accuracy"] == same["paraphrase_accuracy_reference"]  # the pairs of the test split
    apart = sentence_fidelity(other, direct, bundle)  # a reference given as its embeddings
    assert apart["cosine_mean"] < 0.99 and apart["cosine_min"] <= apart["cosine_mean"]
    assert "paraphrase_accuracy" not in sentence_fidelity(model, model, bundle, split="val")
