"""Tasks on real Hugging Face models (tiny, built offline from configs): ModelOutput outputs, dict batches with
input_ids + attention_mask, a GPT-2 language model, and a BERT encoder distilled into a shallower one by cosine."""

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import deepslim as ds
from deepslim.tasks import Embedding, LanguageModeling, SequenceClassification
from deepslim.train import fidelity

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Texts(Dataset):
    """Random token sequences with padding; the label says whether token 7 occurs in the unpadded part."""

    def __init__(self, n, seed, labels=True):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 12, (n, 12), generator=g)
        lengths = torch.randint(4, 13, (n,), generator=g)
        self.mask = (torch.arange(12) < lengths[:, None]).long()
        self.ids[self.mask == 0] = 0  # the pad token
        self.labels = ((self.ids == 7) & (self.mask == 1)).any(1).long() if labels else None

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        item = {"input_ids": self.ids[i], "attention_mask": self.mask[i]}
        return item if self.labels is None else {**item, "labels": self.labels[i]}


def _bundle(task, labels=True):
    train, val = Texts(128, 0, labels), Texts(32, 1, labels)
    dl = lambda d, s=False: DataLoader(d, batch_size=32, shuffle=s, generator=torch.Generator() if s else None)  # noqa: E731
    example = {"input_ids": val.ids[:1], "attention_mask": val.mask[:1]}
    return ds.DataBundle(name="texts", train=dl(train, True), val=dl(val), test=dl(val), calib=dl(val),
                         example_input=example, num_classes=2, task=task)  # fmt: skip


def _bert(layers=2, **kw):
    cfg = transformers.BertConfig(vocab_size=16, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, **kw)  # fmt: skip
    return cfg


def test_a_bert_sequence_classifier_trains_on_dict_batches():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(_bert(num_labels=2))
    data = _bundle(SequenceClassification())
    result = ds.fit(model, data, epochs=4, lr=3e-3)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert ds.evaluate(model, data).samples == 32


def test_a_gpt2_language_model_reports_perplexity_and_learns():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=16, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    data = _bundle(LanguageModeling(), labels=False)
    before = ds.evaluate(model, data)
    assert 10 < before.value < 25  # near-uniform over 16 tokens at initialisation
    ds.fit(model, data, epochs=3, lr=3e-3)
    assert ds.evaluate(model, data).value < before.value


def test_a_bert_encoder_is_distilled_into_a_shallower_one_by_cosine():
    torch.manual_seed(0)
    teacher = transformers.BertModel(_bert(layers=2))
    student = transformers.BertModel(_bert(layers=1))
    data = _bundle(Embedding(), labels=False)  # unlabelled text: the teacher's embeddings are the targets
    start = fidelity(student, teacher, data)["cosine"]
    ds.distill(student, teacher, data, ds.KDConfig(alpha=1.0), epochs=4, lr=3e-3)
    end = fidelity(student, teacher, data)["cosine"]
    assert end > start + 0.05 and end > 0.9, (start, end)
