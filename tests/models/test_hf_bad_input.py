"""Bad input to Hugging Face encoders that used to fail deep inside transformers, tokenizers or attention with their
own exception types: broken tokenizer files, a mask from another tokenization, and a ViT image whose patch grid is
not the model's positions. Each is now a deepslim error that says what to do. And the sentence set's batches (dicts
of ``input_ids``/``attention_mask``), which ``quantize_`` fed to the encoder as one argument (an AttributeError
inside it), now calibrate int8 through the ordinary verb."""

import pytest
import torch

from deepslim.errors import DataError, ModelLoadError

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
hf = pytest.importorskip("deepslim.models.hf")
from tests.models.test_hf import save_tiny_vit  # noqa: E402

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(115)]


def _tiny_bert(path):
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(VOCAB))


@pytest.mark.parametrize("broken", ["tokenizer.json", "vocab.txt"])
def test_a_tokenizer_file_that_cannot_be_read_is_a_model_load_error_naming_the_directory(tmp_path, broken):
    _tiny_bert(tmp_path)
    model = hf.load_hf(tmp_path)
    assert hf.tokenize(model, ["w1 w2"], seq_len=6)[0].tolist() == [[2, 6, 7, 3, 0, 0]]  # the files as written work
    hf._tokenizer.cache_clear()
    if broken == "tokenizer.json":
        (tmp_path / "tokenizer.json").write_text('{"truncated": ')  # an interrupted copy: not JSON
    else:
        (tmp_path / "vocab.txt").write_text("")  # present but empty: no [UNK], no words
    with pytest.raises(ModelLoadError, match=rf"tokenizer files in {tmp_path} cannot be read .*copy the model's"):
        hf.tokenize(model, ["w1 w2"], seq_len=6)
    hf._tokenizer.cache_clear()


def test_a_mask_of_another_shape_than_the_ids_is_refused_before_attention(tmp_path):
    _tiny_bert(tmp_path)
    model = hf.load_hf(tmp_path).eval()
    ids = torch.randint(5, 120, (2, 12))
    with torch.no_grad():
        assert model(ids, torch.ones(2, 12, dtype=torch.long)).shape == (2, 32)
        for bad in (torch.ones(2, 10, dtype=torch.long), torch.ones(3, 12, dtype=torch.long)):
            with pytest.raises(DataError, match=r"attention_mask has shape \(\d, \d+\) but input_ids \(2, 12\); pass"):
                model(ids, bad)


def test_a_vit_image_whose_patch_grid_is_not_the_models_positions_is_refused_with_the_size_to_resize_to(tmp_path):
    save_tiny_vit(tmp_path)
    model = hf.load_hf(tmp_path).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 32)
        for h, w in ((32, 32), (16, 24), (8, 8)):  # more positions, a different grid, fewer
            with pytest.raises(DataError, match=rf"an image of {h}x{w} pixels does not fit the model's 16x16 \(4 patch "
                                                r"positions\); resize the images to 16x16"):  # fmt: skip
                model(torch.randn(1, 3, h, w))


def test_the_sentence_sets_dict_batches_calibrate_int8_through_the_ordinary_verb(tmp_path):
    import deepslim as ds
    from deepslim.compress.quantize import QuantMixin

    _tiny_bert(tmp_path)
    model = hf.load_hf(tmp_path).eval()
    ids = torch.randint(5, 120, (4, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    batches = [{"input_ids": ids[i : i + 2], "attention_mask": mask[i : i + 2]} for i in (0, 2)]  # as load_data gives
    with torch.no_grad():
        want = model(ids, mask)
        assert torch.equal(model(batches[0]), want[:2])  # a batch dict is the same call as its two tensors
    # static scales (calibration='auto' would give this encoder dynamic int8, which has none)
    ds.quantize_(model, ds.LinearQuantConfig(bits=8, calibration="minmax"), calib_data=batches)
    assert ds.quantization_report(model).calibration == "minmax"
    scales = [float(m.act_scale) for m in model.modules() if isinstance(m, QuantMixin)]
    assert len(scales) == 6 and all(s != 1.0 for s in scales)  # every projection saw the batches (1.0: never)
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(model(ids, mask), want).min() > 0.99
    with pytest.raises(DataError, match=r"a batch dict needs 'input_ids'.*got keys \['ids'\]"):
        model({"ids": ids})
