"""Transformers: a Vision Transformer and a BERT-style encoder.

ViT: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021 (``vit_b16`` has torchvision's 86,567,656
parameters). BERT: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers", NAACL 2019
(``bert_base`` has 109,482,240 parameters before the classification head). Attention heads are explicit
(``num_heads``, ``head_dim``) and projections are plain ``nn.Linear`` layers, so pruning can remove whole heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepslim.errors import DataError
from deepslim.models._registry import register_model
from deepslim.models.hf import check_length

_VIT_PAPER = "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021"
_BERT_PAPER = "Devlin et al., BERT, NAACL 2019"



def _tracing(x: torch.Tensor) -> bool:
    """Whether ``x`` is being traced (torch.jit or torch.fx): its shape is then a traced value, and a Python check on
    it would stop the trace (channel pruning captures the zoo's ViT and BERT with torch.fx)."""
    return torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy)

class SelfAttention(nn.Module):
    """Multi-head self-attention; ``fused_qkv`` uses one (dim → 3·dim) projection as ViT does, else three."""

    def __init__(self, dim: int, num_heads: int, *, fused_qkv: bool, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, N, C)
        inner = self.num_heads * self.head_dim
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split(inner, dim=-1)
        else:
            q, k, v = self.query(x), self.key(x), self.value(x)
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, N, H*D)


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))  # fmt: skip


class PreNormBlock(nn.Module):
    """x + attn(ln(x)); x + mlp(ln(x)) — the ViT encoder block."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, fused_qkv=True, dropout=dropout)
        self.ln2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class VisionTransformer(nn.Module):
    def __init__(self, *, image_size: int, patch_size: int, in_channels: int, dim: int, depth: int, num_heads: int,
                 mlp_dim: int, num_classes: int, dropout: float):  # fmt: skip
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"input_size {image_size} is not a multiple of patch_size {patch_size}")
        tokens = (image_size // patch_size) ** 2 + 1
        self.image_size = image_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, dim).normal_(std=0.02))
        self.blocks = nn.Sequential(*[PreNormBlock(dim, num_heads, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def check_image(self, x: torch.Tensor) -> None:
        """Refuse images the position embeddings do not fit (a one-line DataError with the size to resize to) instead
        of a shape error deep in the addition: the patch grid is the token sequence, one position per patch."""
        if _tracing(x):  # the trace's example fits; shapes are traced values there
            return
        conv = self.patch_embed
        patch, side = int(conv.kernel_size[0]), self.image_size  # the positions' grid, in pixels
        if x.ndim != 4 or x.shape[1] != conv.in_channels or tuple(x.shape[-2:]) != (side, side):
            raise DataError(f"the model takes images of shape (B, {conv.in_channels}, {side}, {side}) (its "
                            f"{side // patch}x{side // patch} grid of {patch}x{patch} patches has one position "
                            f"each), got {tuple(x.shape)}; resize the images to {side}x{side}")  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image(x)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model(paper=_VIT_PAPER)
def vit_b16(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, dropout: float = 0.0) -> nn.Module:
    """ViT-B/16: 12 blocks of width 768 with 12 heads; 86,567,656 parameters with the ImageNet head."""
    return VisionTransformer(image_size=input_size, patch_size=16, in_channels=in_channels, dim=768, depth=12,
                             num_heads=12, mlp_dim=3072, num_classes=num_classes, dropout=dropout)  # fmt: skip


@register_model(paper=_VIT_PAPER)
def vit_tiny(*, num_classes: int = 10, in_channels: int = 3, input_size: int = 32, patch_size: int = 4,
             dim: int = 192, depth: int = 6, num_heads: int = 3, mlp_dim: int = 384,
             dropout: float = 0.0) -> nn.Module:  # fmt: skip
    """A small ViT for 32×32 images (4×4 patches) that trains on a CPU."""
    return VisionTransformer(image_size=input_size, patch_size=patch_size, in_channels=in_channels, dim=dim,
                             depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, num_classes=num_classes,
                             dropout=dropout)  # fmt: skip


class PostNormBlock(nn.Module):
    """ln(x + attn(x)); ln(x + mlp(x)) — the BERT encoder layer."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.attn = SelfAttention(dim, num_heads, fused_qkv=False, dropout=dropout)
        self.ln1 = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = MLP(dim, mlp_dim, dropout)
        self.ln2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, attn_mask))
        return self.ln2(x + self.mlp(x))


class BertEncoder(nn.Module):
    def __init__(self, *, vocab_size: int, max_positions: int, type_vocab_size: int, dim: int, depth: int,
                 num_heads: int, mlp_dim: int, num_classes: int, dropout: float):  # fmt: skip
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(PostNormBlock(dim, num_heads, mlp_dim, dropout) for _ in range(depth))
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_classes) if num_classes else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids: (B, N) token ids, N <= max_positions (the position table's size)
        if not _tracing(input_ids):  # traced sizes are tensors or fx proxies; the trace's example fits
            check_length(input_ids.size(1), self.position_embeddings.num_embeddings)
        pos = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos) + self.token_type_embeddings.weight[0]
        x = self.dropout(self.embed_norm(x))  # (B, N, C)
        mask = None
        if attention_mask is not None:  # (B, N) of 1 (keep) / 0 (pad) -> broadcastable boolean mask
            mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, C)
        return pooled if self.classifier is None else self.classifier(pooled)


def _token_input(batch_size: int = 1, *, vocab_size: int = 30522, seq_len: int = 128, **_: object) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch_size, seq_len))


@register_model(paper=_BERT_PAPER, task="text", example=_token_input)
def bert_base(*, num_classes: int = 2, vocab_size: int = 30522, seq_len: int = 128, dropout: float = 0.1) -> nn.Module:
    """BERT-base: 12 layers of width 768, 12 heads; 109,482,240 parameters plus the classification head."""
    return BertEncoder(vocab_size=vocab_size, max_positions=512, type_vocab_size=2, dim=768, depth=12, num_heads=12,
                       mlp_dim=3072, num_classes=num_classes, dropout=dropout)  # fmt: skip


@register_model(paper=_BERT_PAPER, task="text", example=_token_input)
def bert_mini(*, num_classes: int = 2, vocab_size: int = 30522, seq_len: int = 128, dim: int = 256, depth: int = 4,
              num_heads: int = 4, mlp_dim: int = 1024, dropout: float = 0.1) -> nn.Module:  # fmt: skip
    """A 4-layer, 256-wide BERT-style encoder (BERT-mini's shape, Turc et al. 2019)."""
    return BertEncoder(vocab_size=vocab_size, max_positions=512, type_vocab_size=2, dim=dim, depth=depth,
                       num_heads=num_heads, mlp_dim=mlp_dim, num_classes=num_classes, dropout=dropout)  # fmt: skip
