"""Token-level compression of transformer encoders: merging (ToMe), pruning (PoWER-BERT/LTP) and layer dropping.

Fewer tokens make every later matrix product smaller, so unlike masks these run faster in any runtime: the reduced
encoders export to ONNX as ordinary graphs. Works on Hugging Face BERT-style sentence encoders
(:mod:`deepslim.models.hf`: ``all-minilm-l6-v2``, ``hf:PATH``) and on the zoo's Vision Transformer. Learned per-layer
thresholds (LTP) are trained by :func:`deepslim.train.learn_token_thresholds` (training sits above this package) and
applied through ``PruneTokensConfig(threshold=...)``.

>>> model = ds.load_model("all-minilm-l6-v2")
>>> merge_tokens_(model, MergeTokensConfig(r=8))          # 8 tokens fewer after every layer
>>> prune_tokens_(model, PruneTokensConfig(keep_ratio=0.7))
>>> drop_layers_(model, keep=[0, 2, 4])                   # then distill to recover (deepslim.train.distill)
"""

from deepslim.compress.tokens.config import MergeTokensConfig, PruneTokensConfig
from deepslim.compress.tokens.verbs import drop_layers_, layer_plans, merge_tokens_, prune_tokens_, token_layers

__all__ = ["MergeTokensConfig", "PruneTokensConfig", "drop_layers_", "layer_plans", "merge_tokens_", "prune_tokens_",
           "token_layers"]  # fmt: skip
