"""fit, evaluate and distill beyond image classification: regression, a two-input text model with dict outputs, a
language model, and an embedding model distilled by cosine similarity."""

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepslim as ds
from deepslim.data._bundle import make_bundle
from deepslim.tasks import Embedding, LanguageModeling, Regression, SequenceClassification
from deepslim.train import fidelity


def _bundle(name, train, val, task, example, batch_size=32):
    def dl(ds_, shuffle=False):
        return DataLoader(ds_, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator() if shuffle else None)

    return ds.DataBundle(name=name, train=dl(train, True), val=dl(val), test=dl(val), calib=dl(val),
                         example_input=example, num_classes=0, task=task)  # fmt: skip


def test_regression_fit_reduces_mse_and_reports_r2():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g)
    y = x @ torch.randn(8, generator=g) + 0.1 * torch.randn(600, generator=g)
    data = make_bundle("lin", x[:400].numpy(), y[:400].numpy(), x[400:500].numpy(), y[400:500].numpy(),
                       x[500:].numpy(), y[500:].numpy(), batch_size=32, calib_size=16, seed=0,
                       task=Regression())  # fmt: skip
    assert data.train.dataset.tensors[1].dtype == torch.float32 and data.num_classes == 0
    model = nn.Linear(8, 1)
    before = ds.evaluate(model, data)
    result = ds.fit(model, data, epochs=15, lr=3e-2)
    after = ds.evaluate(model, data)
    assert after.metric == "r2" and after.loss < before.loss / 10 and after.value > 0.95
    assert after.accuracy != after.accuracy  # NaN: regression has no accuracy
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert "val_r2" in result.history[0] and result.best_val_metric > 0.95


class BagOfTokens(nn.Module):
    """Two inputs (input_ids, attention_mask) and a Hugging Face-like dict output."""

    def __init__(self, vocab=12, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask):
        w = attention_mask.unsqueeze(-1).float()
        pooled = (self.emb(input_ids) * w).sum(1) / w.sum(1).clamp_min(1)
        return {"logits": self.head(pooled), "pooled": pooled}


class DictDataset(torch.utils.data.Dataset):
    def __init__(self, ids, mask, labels):
        self.ids, self.mask, self.labels = ids, mask, labels

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def _token_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12, (n, 10), generator=g)
    lengths = torch.randint(3, 11, (n,), generator=g)
    mask = (torch.arange(10) < lengths[:, None]).long()
    labels = ((ids == 7) & (mask == 1)).any(1).long()  # does the (unpadded) text contain token 7?
    return ids, mask, labels


@pytest.mark.parametrize("layout", ["dict", "tuple"])
def test_a_two_input_model_with_dict_outputs_learns(layout):
    make = (lambda t: DictDataset(*t)) if layout == "dict" else (lambda t: TensorDataset(*t))
    train, val = make(_token_data(384, 0)), make(_token_data(128, 1))
    example = {"input_ids": torch.zeros(1, 10, dtype=torch.long), "attention_mask": torch.ones(1, 10)}
    data = _bundle("bag", train, val, SequenceClassification(), example, batch_size=64)
    torch.manual_seed(0)
    model = BagOfTokens()
    before = ds.evaluate(model, data)
    result = ds.fit(model, data, epochs=6, lr=3e-2)
    after = ds.evaluate(model, data)
    assert result.history[-1]["train_loss"] < 0.7 * result.history[0]["train_loss"]
    assert after.loss < before.loss and after.accuracy > 0.8 and after.samples == 128
    assert data.input_shape == (10,)


class Bigram(nn.Module):
    def __init__(self, vocab=9):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, input_ids):
        return self.table(input_ids)  # (B, T, V) logits for the next token


def test_a_language_model_learns_next_tokens_and_perplexity_falls():
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, 9, (256, 1), generator=g)
    seq = (start + torch.arange(12)) % 9  # each token is followed by the next one mod 9
    data = _bundle("count", TensorDataset(seq[:192]), TensorDataset(seq[192:]), LanguageModeling(), seq[:1])
    model = Bigram()
    before = ds.evaluate(model, data)
    ds.fit(model, data, epochs=15, lr=0.1)
    after = ds.evaluate(model, data)
    assert before.value > 5 and after.value < 1.5 and after.accuracy == 1.0  # perplexity: ~9 (chance) -> ~1


def test_an_embedding_model_is_distilled_by_cosine_similarity():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 16))
    student = nn.Linear(20, 16)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 20, generator=g)
    data = _bundle("emb", TensorDataset(x[:384]), TensorDataset(x[384:]), Embedding(), x[:1])  # inputs only
    frozen = [p.clone() for p in teacher.parameters()]
    start = fidelity(student, teacher, data)["cosine"]
    result = ds.distill(student, teacher, data, ds.KDConfig(alpha=1.0), epochs=6, lr=2e-2)
    end = fidelity(student, teacher, data)["cosine"]
    assert start < 0.3 and end > 0.95, (start, end)  # measured: 0.003 -> 0.98
    assert result.best_val_metric == pytest.approx(max(h["val_cosine"] for h in result.history))
    assert all(torch.equal(a, b) for a, b in zip(frozen, teacher.parameters(), strict=True))
    # with target embeddings in the batch, evaluate scores the cosine to them directly
    with torch.no_grad():
        labelled = dataclasses.replace(data, test=DataLoader(TensorDataset(x[384:], teacher(x[384:])), batch_size=64))
    assert ds.evaluate(student, labelled).value == pytest.approx(end, abs=1e-5)
