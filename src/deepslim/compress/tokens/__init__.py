"""Token-level compression of transformer encoders: merging (ToMe), pruning (PoWER-BERT/LTP) and layer dropping.

Fewer tokens make every later matrix product smaller, so unlike masks these run faster in any runtime: the reduced
encoders export to ONNX as ordinary graphs. Works on Hugging Face BERT-style sentence encoders
(:mod:`deepslim.models.hf`: ``all-minilm-l6-v2``, ``hf:PATH``) and on the zoo's Vision Transformer.

>>> model = ds.load_model("all-minilm-l6-v2")
>>> merge_tokens_(model, MergeTokensConfig(r=8))          # 8 tokens fewer after every layer
>>> prune_tokens_(model, PruneTokensConfig(keep_ratio=0.7))
>>> learn_token_thresholds(model, teacher, ids, mask, TokenThresholdConfig(keep_target=0.5), kd)  # LTP
>>> drop_layers_(model, keep=[0, 2, 4])                   # then distill to recover (deepslim.train.distill)
"""

from deepslim.compress.tokens.config import MergeTokensConfig, PruneTokensConfig
from deepslim.compress.tokens.learned import TokenThresholdConfig, kept_shares, learn_token_thresholds
from deepslim.compress.tokens.verbs import drop_layers_, layer_plans, merge_tokens_, prune_tokens_, token_layers

__all__ = ["MergeTokensConfig", "PruneTokensConfig", "TokenThresholdConfig", "drop_layers_", "kept_shares",
           "layer_plans", "learn_token_thresholds", "merge_tokens_", "prune_tokens_", "token_layers"]  # fmt: skip
