"""Int8 choices on a BERT-style encoder (review L7, session 10): a search space chooses each attention's query, key
and value precision once (dynamic int8, the encoder's default, quantizes all three or none, and a split trio is a
model the export refuses), and a sensitivity table quantizes every row with one calibration."""

import importlib
import random
from types import SimpleNamespace

import pytest
import torch

from deepslim.compress.quantize import Calibration, LinearQuantConfig, QuantMixin
from deepslim.compress.quantize._dynamic import split_trio
from deepslim.errors import ConfigError
from deepslim.search.space import SearchSpace, quantize_policy

sens = importlib.import_module("deepslim.search.sensitivity")  # the module (the package exports its function)

transformers = pytest.importorskip("transformers", reason="Hugging Face encoders need the transformers package")
hf = pytest.importorskip("deepslim.models.hf")


def _encoder() -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    return hf.SentenceEncoder(transformers.BertModel(config, add_pooling_layer=False).eval(), max_positions=40).eval()


def _batch(seed: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 120, (n, 10), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones_like(ids)


def _quantized(model: torch.nn.Module) -> dict[str, bool]:
    return {n: bool(m.dynamic) for n, m in model.named_modules() if isinstance(m, QuantMixin)}


def test_a_bert_space_chooses_each_query_key_value_trio_once_and_no_policy_splits_one():
    model = _encoder()
    space = SearchSpace.from_model(model, _batch(9, 1), kinds=("int8",))
    att = [f"encoder.encoder.layer.{i}.attention.self" for i in range(2)]
    assert space.tied == tuple((f"{a}.query", f"{a}.key", f"{a}.value") for a in att)
    assert SearchSpace.from_dict(space.to_dict()) == space
    names = [k.removeprefix("int8:") for k in space.choices()]
    assert f"{att[0]}.query" in names and f"{att[0]}.key" not in names and f"{att[1]}.value" not in names
    assert space.size == 2 ** (len(space.int8_layers) - 4)
    rng = random.Random(0)
    for policy in [space.sample(rng) for _ in range(20)] + [space.sample_at(rng, 0.5) for _ in range(5)]:
        assert split_trio(model, [n for n, q in policy.int8.items() if q]) is None
        assert space.policy(policy.params()) == policy
    params = {**space.uniform(1.0, True).params(), f"int8:{att[0]}.query": False}
    policy = space.policy({k: v for k, v in params.items() if not k.endswith((".key", ".value"))})
    q = quantize_policy(model, space, policy, calib_data=[_batch(s) for s in range(2)])
    found = _quantized(q)
    assert f"{att[0]}.query" not in found and f"{att[0]}.key" not in found and f"{att[1]}.key" in found
    assert all(found.values())  # one calibration for the whole model: dynamic, the trio left out whole
    with pytest.raises(ConfigError, match=rf"int8:{att[0]}.key=True splits the int8 choice it is tied to"):
        space.policy(params)


@pytest.fixture
def spy(monkeypatch):
    """Each row's quantized layers (name: dynamic?), recorded as the table applies them; accuracy not evaluated."""
    rows: list[dict[str, bool]] = []
    real = sens.technique_for

    def technique_for(config):
        technique = real(config)

        def apply(model, cfg, **kw):
            out = technique.apply(model, cfg, **kw)
            rows.append(_quantized(model))
            return out

        return SimpleNamespace(candidates=technique.candidates, apply=apply)

    monkeypatch.setattr(sens, "technique_for", technique_for)
    monkeypatch.setattr(sens, "evaluate", lambda *a, **k: SimpleNamespace(accuracy=1.0))
    return rows


def test_a_sensitivity_table_on_a_bert_encoder_quantizes_every_row_with_one_calibration(spy):
    model = _encoder()
    data = SimpleNamespace(example_input=_batch(9, 1), calib=[_batch(s) for s in range(2)])
    layers = ["encoder.encoder.layer.0.attention.self.query", "encoder.encoder.layer.0.intermediate.dense"]
    table = sens.sensitivity(model, data, LinearQuantConfig(accept_low_fidelity=True), levels=(8, 4), layers=layers)
    assert len(table.rows) == 4 and [list(r) for r in spy] == [[n] for n in layers for _ in range(2)]
    assert not any(d for row in spy for d in row.values())  # every row static (auto would make some dynamic)
    spy.clear()
    dynamic = LinearQuantConfig(calibration=Calibration.DYNAMIC, accept_low_fidelity=True)
    sens.sensitivity(model, data, dynamic, levels=(8,), layers=layers[:1])
    trio = [layers[0].replace("query", p) for p in ("query", "key", "value")]
    assert spy == [dict.fromkeys(trio, True)]  # dynamic int8: the query row quantizes its whole trio
