"""PyTorch implementation of SPEC sections 2-4: TConstFormer, TLinFormer and
the baseline Transformer, written from the specification.

Module and parameter names are chosen so that `state_dict()` keys are exactly
the SPEC section 6 tensor names; a model file therefore maps onto a model
without any renaming (see `export.py`).

Two entry points:
- `forward_last(ids)`: logits of the last token of a 1-D sequence, the
  SPEC section 4 forward with `r = L mod W` (W when 0) window tokens.
- `forward(ids)`: the chunked training forward for a batch `[N, L]`. Every
  chunk of W tokens starting at c (a multiple of W) is a window whose
  context is tokens 0..c-1, so logits row p is exactly what a streaming
  session (SPEC section 5) returns after token p. Returns `[N, L, V]`.
"""

import functools
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHITECTURES = ("tconstformer", "tlinformer", "transformer")


def default_ffn_hidden(n_embd, multiple_of=64):
    """SwiGLU hidden size: 8/3 * d rounded up to a multiple (our convention;
    the file format reads f from the shape of w1, so any f loads)."""
    f = int(8 * n_embd / 3)
    return multiple_of * ((f + multiple_of - 1) // multiple_of)


@dataclass
class ModelConfig:
    arch: str = "tconstformer"
    vocab_size: int = 256
    n_embd: int = 128
    n_head: int = 4
    # Blocks for tconstformer/tlinformer; layers for the baseline transformer.
    n_block: int = 2
    block_inner_depth: int = 4
    history_window: int = 64
    generate_window: int = 64
    ffn_hidden: int = 0  # 0: default_ffn_hidden(n_embd)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tied: bool = True  # False adds transformer.lm_head.weight

    def __post_init__(self):
        if self.ffn_hidden <= 0:
            self.ffn_hidden = default_ffn_hidden(self.n_embd)
        self.validate()

    def validate(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{self.arch}'")
        for name in ("vocab_size", "n_embd", "n_head", "n_block", "ffn_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head dim {self.n_embd // self.n_head} must be even (RoPE pairs)")
        if self.arch != "transformer":
            if self.block_inner_depth < 2:
                raise ValueError(f"block_inner_depth must be >= 2, got {self.block_inner_depth}")
            if self.history_window <= 0 or self.generate_window <= 0:
                raise ValueError("history_window and generate_window must be positive")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------
# RoPE (SPEC section 2): adjacent pairs, angles in float64.


@functools.lru_cache(maxsize=64)
def _rope_table_f64(n_pos, head_dim, base):
    """cos/sin [n_pos, head_dim/2] in float64 for positions 0..n_pos-1."""
    m = torch.arange(head_dim // 2, dtype=torch.float64)
    theta = torch.pow(torch.tensor(float(base), dtype=torch.float64), -2.0 * m / head_dim)
    angle = torch.arange(n_pos, dtype=torch.float64)[:, None] * theta[None, :]
    return torch.cos(angle), torch.sin(angle)


def _rope_table(start, n, head_dim, base, dtype):
    # Grow the cached table in powers of two so that consecutive calls with
    # slightly larger positions do not each recompute it.
    need = start + n
    size = 1 << max(need - 1, 1).bit_length()
    cos, sin = _rope_table_f64(size, head_dim, float(base))
    return cos[start:need].to(dtype), sin[start:need].to(dtype)


def apply_rope(u, start, base):
    """Rotate u [..., n, dh] whose rows are at positions start..start+n-1."""
    n, dh = u.shape[-2], u.shape[-1]
    cos, sin = _rope_table(start, n, dh, base, u.dtype)
    cos, sin = cos.to(u.device), sin.to(u.device)
    even, odd = u[..., 0::2], u[..., 1::2]
    out_even = even * cos - odd * sin
    out_odd = even * sin + odd * cos
    return torch.stack((out_even, out_odd), dim=-1).flatten(-2)


def attend(q, k, v, causal):
    """softmax(q k^T / sqrt(dh)) v per head; q [N,h,n,dh], k,v [N,h,m,dh].

    With `causal`, n == m and row i sees keys 0..i."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


# ---------------------------------------------------------------------------
# Parameter containers (names match SPEC section 6).


class SwiGLU(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class InnerLayer(nn.Module):
    """One parameter set {norm1, qkv_proj, out_proj, norm2, ffn}. The
    attention wiring lives in the model's forward, because the same layer is
    applied to both the context stream and the window stream."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.n_embd
        self.n_head = cfg.n_head
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.qkv_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.ffn = SwiGLU(d, cfg.ffn_hidden)

    def qkv(self, x):
        """LN1 then the joint projection, split into heads: three [N,h,n,dh]."""
        n_batch, n, d = x.shape
        y = self.qkv_proj(self.norm1(x)).view(n_batch, n, 3, self.n_head, d // self.n_head)
        y = y.permute(2, 0, 3, 1, 4)
        return y[0], y[1], y[2]

    def finish(self, x, heads):
        """Residual attention output, then the residual SwiGLU."""
        n_batch, h, n, dh = heads.shape
        x = x + self.out_proj(heads.transpose(1, 2).reshape(n_batch, n, h * dh))
        return x + self.ffn(self.norm2(x))


class TConstBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.compress_context_layer = InnerLayer(cfg)
        self.hidden_layers = nn.ModuleList(
            InnerLayer(cfg) for _ in range(cfg.block_inner_depth - 2)
        )
        self.restore_context_shape_layer = InnerLayer(cfg)


class Backbone(nn.Module):
    """Holds everything under the `transformer.` prefix."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.arch == "transformer":
            self.transformer_layers = nn.ModuleList(InnerLayer(cfg) for _ in range(cfg.n_block))
        else:
            self.transformer_layers = nn.ModuleList(TConstBlock(cfg) for _ in range(cfg.n_block))
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        if not cfg.tied:
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)


class TConstModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.transformer = Backbone(cfg)

    # -- initialisation -----------------------------------------------------

    def init_weights(self, seed=None, std=0.02):
        """GPT-style init: normal(0, std) weights, residual outputs scaled by
        1/sqrt(2 * layers), zero biases, unit LayerNorms."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        n_layers = self.n_layers()
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "norm" in name.split(".")[-2]:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    s = std
                    if name.endswith("out_proj.weight") or name.endswith("w2.weight"):
                        s = std / math.sqrt(2 * n_layers)
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * s)
        return self

    def n_layers(self):
        c = self.cfg
        return c.n_block if c.arch == "transformer" else c.n_block * c.block_inner_depth

    # -- forward --------------------------------------------------------------

    def _head(self, x):
        x = self.transformer.norm(x)
        w = self.transformer.lm_head.weight if not self.cfg.tied else self.embedding.weight
        return torch.matmul(x, w.t())

    def _transformer_hidden(self, x):
        """Baseline: plain causal pre-LN layers with RoPE at 0.."""
        base = self.cfg.rope_base
        for layer in self.transformer.transformer_layers:
            q, k, v = layer.qkv(x)
            a = attend(apply_rope(q, 0, base), apply_rope(k, 0, base), v, causal=True)
            x = layer.finish(x, a)
        return x

    def _tconst_hidden(self, ctx_ids, win_ids):
        """SPEC section 4 for one (context, window) split; returns the window's
        final hidden states [N, r, d] (before the final norm).

        ctx_ids: [N, Lc] with Lc a multiple of W (Lc may be 0); win_ids [N, r]."""
        cfg = self.cfg
        base = cfg.rope_base
        tlin = cfg.arch == "tlinformer"
        lc = ctx_ids.shape[1]
        hs = max(0, lc - cfg.history_window)
        has_ctx = lc > 0
        c = self.embedding(ctx_ids) if has_ctx else None
        x = self.embedding(win_ids)
        n_blocks = len(self.transformer.transformer_layers)

        for b, blk in enumerate(self.transformer.transformer_layers):
            last = b == n_blocks - 1

            # Compress layer: the context's last Hh rows attend to the whole
            # context and become the compressed stream Z.
            comp = blk.compress_context_layer
            if has_ctx:
                qc, kc, vc = comp.qkv(c)
                kc_rot = apply_rope(kc, 0, base)
                a = attend(apply_rope(qc[:, :, hs:], hs, base), kc_rot, vc, causal=False)
                z = comp.finish(c[:, hs:], a)
            qx, kx, vx = comp.qkv(x)
            qx, kx = apply_rope(qx, lc, base), apply_rope(kx, lc, base)
            ax = attend(qx, kx, vx, causal=True)
            if tlin and has_ctx:
                # TLinFormer only: the window also sees the full context.
                ax = ax + attend(qx, kc_rot, vc, causal=False)
            x = comp.finish(x, ax)

            # Hidden layers: Z self-attends; the window attends to itself and
            # (separate softmax, outputs added) to the K,V of the layer's
            # input Z.
            for layer in blk.hidden_layers:
                if has_ctx:
                    qz, kz, vz = layer.qkv(z)
                    kz = apply_rope(kz, hs, base)
                    z_next = layer.finish(z, attend(apply_rope(qz, hs, base), kz, vz, causal=False))
                x = self._window_step(layer, x, lc, kz if has_ctx else None, vz if has_ctx else None)
                if has_ctx:
                    z = z_next

            # Restore layer: the compress layer's query Qc (all Lc rows, at
            # 0..) reads the compressed stream back to full context length.
            rest = blk.restore_context_shape_layer
            if has_ctx:
                _, kz, vz = rest.qkv(z)
                kz = apply_rope(kz, hs, base)
                if not last:  # the last block's C' is never used
                    a = attend(apply_rope(qc, 0, base), kz, vz, causal=False)
                    c = rest.finish(c, a)
            x = self._window_step(rest, x, lc, kz if has_ctx else None, vz if has_ctx else None)
        return x

    def _window_step(self, layer, x, lc, kz, vz):
        """Window path of a hidden/restore layer: causal self-attention plus,
        when context exists, attention to the (already rotated) kz, vz."""
        base = self.cfg.rope_base
        qx, kx, vx = layer.qkv(x)
        qx, kx = apply_rope(qx, lc, base), apply_rope(kx, lc, base)
        ax = attend(qx, kx, vx, causal=True)
        if kz is not None:
            ax = ax + attend(qx, kz, vz, causal=False)
        return layer.finish(x, ax)

    def forward(self, ids):
        """Chunked training forward. ids: [N, L] long -> logits [N, L, V].

        Row p equals the streaming logits after token p (SPEC section 5)."""
        if ids.dim() != 2:
            raise ValueError("forward expects ids of shape [N, L]")
        if self.cfg.arch == "transformer":
            return self._head(self._transformer_hidden(self.embedding(ids)))
        w = self.cfg.generate_window
        outs = []
        for c0 in range(0, ids.shape[1], w):
            outs.append(self._tconst_hidden(ids[:, :c0], ids[:, c0 : c0 + w]))
        return self._head(torch.cat(outs, dim=1))

    def forward_last(self, ids):
        """Logits [V] of the last token of a 1-D sequence (SPEC section 4)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        n = ids.shape[1]
        if n < 1:
            raise ValueError("forward_last needs at least one token")
        if self.cfg.arch == "transformer":
            return self._head(self._transformer_hidden(self.embedding(ids)))[0, -1]
        w = self.cfg.generate_window
        r = n % w or w
        lc = n - r
        return self._head(self._tconst_hidden(ids[:, :lc], ids[:, lc:]))[0, -1]


def build_model(cfg: ModelConfig, seed=None):
    return TConstModel(cfg).init_weights(seed)
