"""Recurrent Video Masked Autoencoders (RVM), the whole model in one file.

Zoran et al., "Recurrent Video Masked Autoencoders" (Google DeepMind). Section numbers below
refer to the paper; "SPEC" is the project's decision record (../shared/SPEC.md) for what the
paper leaves open, which follows the authors' released inference code so that their
checkpoints load (see `load_official` at the bottom).

The story, in the order the paper tells it (§3.1, Fig. 2):

    frame X_t --tokenize--> e_t --ViT encoder--> ê_t --recurrent core (Eq. 1-3)--> o_t = s_t
    target X_T --tokenize, mask 95%--> visible tokens --same encoder--> ê^T
    decoder( queries = ê^T placed back on the grid + [MASK], keys/values = o_1..o_K ) --> X_T
    loss = mean over every pixel of (reconstruction - X_T)^2

Shapes: frames are float tensors in [0, 1], [B, 3, H, W] per frame and [B, T, 3, H, W] per
video. P is the patch size, N = (H/P)(W/P) patch tokens, D the encoder width; every token set
carries a CLS token in front, so per frame there are N + 1 tokens.
"""

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint


@dataclass
class RVMConfig:
    # Encoder (Table 5). Defaults are RVM-S.
    patch_size: int = 16
    width: int = 384  # D: encoder width = core width (Table 5: "RNN core dimension matches")
    enc_layers: int = 12
    enc_heads: int = 6
    enc_mlp: int = 0  # 0 -> 4 * width (MLP ratio 4)
    # Recurrent core (§3.2, Table 5).
    core_layers: int = 4
    core_heads: int = 8
    core_mlp: int = 0  # 0 -> 4 * width
    # Decoder (Table 6: fixed across sizes).
    dec_width: int = 512
    dec_layers: int = 8
    dec_heads: int = 16
    dec_mlp: int = 0  # 0 -> 4 * dec_width
    # Training objective (§3.1).
    mask_ratio: float = 0.95
    n_deltas: int = 64  # time gaps Δ are one-hot encoded over [0, n_deltas)
    # Positions: the encoder's sin/cos table is built for this grid and resized to others (SPEC §1).
    base_grid: int = 16
    # Temporal aggregation (Table 3b): 'rnn' is RVM; 'attn' is the §9 self-attention baseline.
    aggregator: str = "rnn"
    # What the decoder cross-attends to: 'all' source features o_1..o_K (§3.1, the paper), or
    # 'last', o_K alone. 'last' is ours, for the noise-square demo: with all K the decoder can
    # find motion by comparing frames itself, and the core need not carry it (README).
    decoder_memory: str = "all"
    # Recompute each block in the backward pass instead of storing its activations (§5: BPTT
    # over source frames is what fills memory).
    grad_checkpoint: bool = False

    def __post_init__(self):
        self.enc_mlp = self.enc_mlp or 4 * self.width
        self.core_mlp = self.core_mlp or 4 * self.width
        self.dec_mlp = self.dec_mlp or 4 * self.dec_width
        if self.aggregator not in ("rnn", "attn"):
            raise ValueError(f"RVMConfig.aggregator must be 'rnn' or 'attn', got {self.aggregator!r}")
        if self.decoder_memory not in ("all", "last"):
            raise ValueError(f"RVMConfig.decoder_memory must be 'all' or 'last', got {self.decoder_memory!r}")
        for name, dim, heads in [("enc", self.width, self.enc_heads), ("core", self.width, self.core_heads),
                                 ("dec", self.dec_width, self.dec_heads)]:
            if dim % heads:
                raise ValueError(f"RVMConfig: {name} width {dim} is not divisible by {name}_heads={heads}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"RVMConfig.mask_ratio must be in [0, 1), got {self.mask_ratio}")


# ----------------------------------------------------------------------------------------------
# Positions: fixed 1-D sin/cos tables (MAE style; the paper's "Fourier positional encoding").


def sincos_table(n_positions, dim):
    """[n_positions, dim] table; channel j uses frequency 1 / 10000^(2*floor(j/2)/dim), sin on
    even channels and cos on odd ones (interleaved, as the authors' code). Built in float64."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.from_numpy(table).float()


def encoder_positions(h, w, dim, base_grid=16):
    """The encoder's table: 1-D over the base_grid**2 flattened positions, laid on the
    base_grid x base_grid grid, then resized to h x w like jax.image.resize(..., 'bicubic')
    (Keys a=-0.5, antialiased when shrinking, edge taps renormalised); torch matches that only
    with antialias=True (reference/README.md). Returns [h*w, dim]."""
    table = sincos_table(base_grid * base_grid, dim)
    if (h, w) == (base_grid, base_grid):
        return table
    grid = rearrange(table, "(h w) d -> 1 d h w", h=base_grid)
    grid = F.interpolate(grid.double(), size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return rearrange(grid.float(), "1 d h w -> (h w) d")


# ----------------------------------------------------------------------------------------------
# Building blocks. Attribute names follow the authors' parameter names so that their checkpoints
# map onto ours key by key (`load_official`).


class Attention(nn.Module):
    """Multi-head attention with biased query/key/value/out projections. Self-attention when
    `context` is None, cross-attention otherwise."""

    def __init__(self, dim, heads, kv_dim=None):
        super().__init__()
        kv_dim = kv_dim or dim
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        if context is None:  # self-attention: q, k and v in one matmul (one pass over x, not three)
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            q, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)
        else:
            q, k, v = self.query(x), self.key(context), self.value(context)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        # q is scaled by 1/sqrt(head_dim) inside; the fused kernels keep the softmax in float32
        # also when q, k, v are bf16 (SPEC §1).
        x = F.scaled_dot_product_attention(q, k, v)
        return self.out(rearrange(x, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.dense_in = nn.Linear(dim, hidden)
        self.dense_out = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.dense_out(F.gelu(self.dense_in(x), approximate="tanh"))


def layer_norm(dim):
    return nn.LayerNorm(dim, eps=1e-6)


class ViTBlock(nn.Module):
    """Pre-LN ViT block (§3.1 "Encoder"): x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.attention_norm = layer_norm(dim)
        self.attention = Attention(dim, heads)
        self.mlp_norm = layer_norm(dim)
        self.mlp = MLP(dim, mlp)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class CrossAttentionBlock(nn.Module):
    """The block of the core's Tx and of the decoder (§3.1 "Decoder", Table 6):
    cross-attention to `memory`, then MLP, then self-attention, each pre-normalised with a
    residual. The memory is not normalised here: its producer does that (SPEC §1)."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.ca_attention_norm = layer_norm(dim)
        self.ca_attention = Attention(dim, heads)
        self.mlp_norm = layer_norm(dim)
        self.mlp = MLP(dim, mlp)
        self.attention_norm = layer_norm(dim)
        self.attention = Attention(dim, heads)

    def forward(self, x, memory):
        x = x + self.ca_attention(self.ca_attention_norm(x), memory)
        x = x + self.mlp(self.mlp_norm(x))
        return x + self.attention(self.attention_norm(x))


def run_blocks(blocks, x, *args, use_checkpoint=False):
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(block, x, *args, use_reentrant=False)
        else:
            x = block(x, *args)
    return x


class Encoder(nn.Module):
    """Standard pre-LN ViT, weights shared by every source and target frame (§3.1)."""

    def __init__(self, dim, depth, heads, mlp):
        super().__init__()
        self.layers = nn.ModuleList(ViTBlock(dim, heads, mlp) for _ in range(depth))
        self.norm = layer_norm(dim)
        self.grad_checkpoint = False

    def forward(self, x):
        return self.norm(run_blocks(self.layers, x, use_checkpoint=self.grad_checkpoint))


class CrossTransformer(nn.Module):
    """A stack of CrossAttentionBlocks plus a final LayerNorm: Tx in Eq. 1-3, and the decoder."""

    def __init__(self, dim, depth, heads, mlp):
        super().__init__()
        self.xa_blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, mlp) for _ in range(depth))
        self.output_norm = layer_norm(dim)
        self.grad_checkpoint = False

    def forward(self, x, memory):
        return self.output_norm(run_blocks(self.xa_blocks, x, memory, use_checkpoint=self.grad_checkpoint))


class RecurrentCore(nn.Module):
    """The gated transformer core of §3.2 (GRU gates around a cross-attention transformer)."""

    def __init__(self, dim, depth, heads, mlp):
        super().__init__()
        # The four W of Eq. 1, bias-free, shared across tokens.
        self.input_update = nn.Linear(dim, dim, bias=False)  # W_e^u
        self.state_update = nn.Linear(dim, dim, bias=False)  # W_s^u
        self.input_reset = nn.Linear(dim, dim, bias=False)  # W_e^r
        self.state_reset = nn.Linear(dim, dim, bias=False)  # W_s^r
        # The released model normalises the state before Tx reads it (eps 1e-4, no bias).
        self.state_layer_norm = nn.LayerNorm(dim, eps=1e-4, bias=False)
        self.transformer = CrossTransformer(dim, depth, heads, mlp)  # Tx

    def forward(self, e, state):
        """One step: encoded frame ê_t and state s_{t-1} [B, N+1, D] -> s_t (= o_t)."""
        # Eq. 1, the GRU gates:  u_t = σ(W_e^u ê_t + W_s^u s_{t-1}),  r_t = σ(W_e^r ê_t + W_s^r s_{t-1})
        update_gate = torch.sigmoid(self.input_update(e) + self.state_update(state))
        reset_gate = torch.sigmoid(self.input_reset(e) + self.state_reset(state))
        # Eq. 2, the transformer reads the reset-gated state:  ĥ_t = Tx(q = ê_t, kv = r_t ⊙ LN(s_{t-1}))
        h = self.transformer(e, reset_gate * self.state_layer_norm(state))
        # Eq. 3, the update gate mixes old state and new:  s_t = (1 − u_t) ⊙ s_{t-1} + u_t ⊙ ĥ_t,  o_t = s_t
        return (1 - update_gate) * state + update_gate * h


# ----------------------------------------------------------------------------------------------
# The model.


class RVM(nn.Module):
    def __init__(self, config: RVMConfig):
        super().__init__()
        self.config = c = config
        D, P = c.width, c.patch_size
        # Tokenizer (§3.1): one linear projection per P x P patch, shared by all frames.
        self.tokenizer = nn.Conv2d(3, D, kernel_size=P, stride=P)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        enc_depth = c.enc_layers + (c.core_layers if c.aggregator == "attn" else 0)  # §9: same depth in all
        self.encoder = Encoder(D, enc_depth, c.enc_heads, c.enc_mlp)
        if c.aggregator == "rnn":
            self.rnn_core = RecurrentCore(D, c.core_layers, c.core_heads, c.core_mlp)
        # Decoder (§3.1, Table 6). One Linear embeds both the encoded target and the source features.
        self.decoder_embedder = nn.Linear(D, c.dec_width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, c.dec_width) * 0.02)
        self.delta_embedder = nn.Linear(c.n_deltas, c.dec_width)  # time gap Δ, one-hot in
        self.decoder = CrossTransformer(c.dec_width, c.dec_layers, c.dec_heads, c.dec_mlp)
        self.detokenizer = nn.Linear(c.dec_width, P * P * 3)
        for module in (self.encoder, self.decoder) + ((self.rnn_core.transformer,) if c.aggregator == "rnn" else ()):
            module.grad_checkpoint = c.grad_checkpoint
        self._positions = {}  # (kind, h, w) -> fixed table, built on first use for each grid

    # -- input checks: a wrong input should fail here with a message, not deep inside torch --

    def _check_frames(self, x, what, ndim):
        shape = "[B, 3, H, W]" if ndim == 4 else "[B, T, 3, H, W]"
        if not torch.is_tensor(x) or not x.is_floating_point():
            kind = x.dtype if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{what}: expected a float tensor {shape} with values in [0, 1], got {kind} "
                             "(convert uint8 frames with x.float() / 255)")
        if x.ndim != ndim or x.shape[-3] != 3:
            raise ValueError(f"{what}: expected shape {shape} with 3 colour channels, got {tuple(x.shape)}")
        P = self.config.patch_size
        if x.shape[-2] % P or x.shape[-1] % P:
            raise ValueError(f"{what}: frame size {tuple(x.shape[-2:])} is not a multiple of the patch "
                             f"size {P}; resize or crop the frames")

    def _positions_for(self, kind, h, w, device):
        key = (kind, h, w, device)
        if key not in self._positions:
            c = self.config
            table = (encoder_positions(h, w, c.width, c.base_grid) if kind == "enc"
                     else sincos_table(h * w, c.dec_width))  # decoder: fresh table for the grid, no resize
            self._positions[key] = table.to(device)
        return self._positions[key]

    # -- tokenizer and encoder (§3.1) --

    def tokenize(self, frames):
        """[B, 3, H, W] -> patch tokens e [B, N, D] with positions added (CLS not yet in front)."""
        x = rearrange(self.tokenizer(frames), "b d h w -> b (h w) d")
        h, w = frames.shape[-2] // self.config.patch_size, frames.shape[-1] // self.config.patch_size
        return x + self._positions_for("enc", h, w, frames.device).to(x.dtype)

    def with_cls(self, tokens):
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)

    def encode(self, frames):
        """Per-frame encoder features ê [B, N+1, D]: what an image model sees (no core)."""
        self._check_frames(frames, "encode(frames)", ndim=4)
        return self.encoder(self.with_cls(self.tokenize(frames)))

    # -- streaming: the core makes the model online (§3.2) --

    def step(self, frame, state=None):
        """One frame [B, 3, H, W] and the previous state (None at the start: s_0 = 0) ->
        (features o_t [B, N+1, D], new state s_t). Cost per frame is constant."""
        if self.config.aggregator != "rnn":
            raise ValueError("step() needs aggregator='rnn': the 'attn' baseline attends over all frames at once")
        e = self.encode(frame)
        if state is None:
            state = torch.zeros_like(e)  # s_0 = 0 (§3.1)
        elif state.shape != e.shape:
            raise ValueError(f"step(): state has shape {tuple(state.shape)} but this frame gives {tuple(e.shape)} "
                             "([B, N+1, D]); a state only continues a video of the same batch size and resolution")
        state = self.rnn_core(e, state.to(e.dtype))
        return state, state  # o_t = s_t (Eq. 3)

    def stream(self, frames, kind="core"):
        """Yields each frame's features [B, N+1, D] as the frames [B, 3, H, W] arrive (any iterable,
        so a video never has to be in memory at once). kind 'core': o_t, the state carried from frame
        to frame; 'encoder': the per-frame encoder output, no recurrence (the image-model baseline)."""
        if kind not in ("core", "encoder"):
            raise ValueError(f"stream(kind): expected 'core' or 'encoder', got {kind!r}")
        state = None
        for frame in frames:
            if kind == "core":
                o, state = self.step(frame, state)
            else:
                o = self.encode(frame)
            yield o

    def features(self, video):
        """Core features o_t of every frame, [B, T, 3, H, W] -> [B, T, N+1, D] (token 0 is CLS).
        With 'rnn' this unrolls `step`, so frame t never sees frames after t."""
        self._check_frames(video, "features(video)", ndim=5)
        if self.config.aggregator == "attn":
            return self._attn_features(video)
        return torch.stack(list(self.stream(video.unbind(1))), dim=1)

    def encoder_features(self, video):
        """Per-frame encoder outputs without any temporal aggregation, [B, T, N+1, D]."""
        self._check_frames(video, "encoder_features(video)", ndim=5)
        return torch.stack(list(self.stream(video.unbind(1), kind="encoder")), dim=1)

    def _source_features(self, source):
        """Training path for the K source frames: the encoder runs on all K at once (one big
        batch), then the core is unrolled over them. [B, K, 3, H, W] -> [B, K, N+1, D]."""
        if self.config.aggregator == "attn":
            return self._attn_features(source)
        B, K = source.shape[:2]
        e = self.encode(rearrange(source, "b k c h w -> (b k) c h w"))
        e = rearrange(e, "(b k) n d -> b k n d", b=B)
        state, out = torch.zeros_like(e[:, 0]), []  # s_0 = 0
        for t in range(K):
            state = self.rnn_core(e[:, t], state)
            out.append(state)
        return torch.stack(out, dim=1)

    def _attn_features(self, video):
        """§9 baseline: every frame's tokens (with CLS) concatenated, a sin/cos time embedding
        added, one ViT over all of them (depth enc_layers + core_layers); split back per frame."""
        B, T = video.shape[:2]
        tokens = self.with_cls(self.tokenize(rearrange(video, "b t c h w -> (b t) c h w")))
        tokens = rearrange(tokens, "(b t) n d -> b t n d", b=B)
        tokens = tokens + sincos_table(T, self.config.width).to(tokens)[None, :, None, :]
        x = self.encoder(rearrange(tokens, "b t n d -> b (t n) d"))
        return rearrange(x, "b (t n) d -> b t n d", t=T)

    # -- training forward (§3.1) --

    def n_visible(self, n_tokens):
        return int(n_tokens * (1 - self.config.mask_ratio))  # M = ⌊(1 − m) N⌋, in Python floats as theirs

    def forward(self, source, target, deltas, mask_perm=None):
        """source [B, K, 3, H, W], target [B, T, 3, H, W], deltas [B, T] (each target's frame
        offset from the first source frame). `mask_perm` [B or 1, T or 1, N] injects the masking
        permutation (position j of the shuffle holds token mask_perm[..., j]; the first M stay
        visible); by default one is drawn per sample and target frame.
        Returns (loss, reconstruction [B, T, 3, H, W], mask [B, T, h, w] with True = masked)."""
        c, P = self.config, self.config.patch_size
        self._check_frames(source, "forward(source)", ndim=5)
        self._check_frames(target, "forward(target)", ndim=5)
        if source.shape[0] != target.shape[0] or source.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"forward(): source {tuple(source.shape)} and target {tuple(target.shape)} must share "
                             "batch size and frame size")
        B, T, _, H, W = target.shape
        h, w = H // P, W // P
        N, M = h * w, self.n_visible(h * w)
        deltas = torch.as_tensor(deltas, device=target.device)
        if deltas.shape != (B, T):
            raise ValueError(f"forward(deltas): expected shape [B, T] = {(B, T)}, got {tuple(deltas.shape)}")
        if deltas.min() < 0 or deltas.max() >= c.n_deltas:
            raise ValueError(f"forward(deltas): time gaps must lie in [0, {c.n_deltas}), got "
                             f"{deltas.min().item()}..{deltas.max().item()}")

        # Source path: encoder + core -> o_1..o_K, all K sets concatenated as keys/values
        # (decoder_memory 'last': o_K alone).
        source_features = self._source_features(source)  # [B, K, N+1, D]
        if c.decoder_memory == "last":
            source_features = source_features[:, -1:]
        memory = self.decoder_embedder(rearrange(source_features, "b k n d -> b (k n) d"))
        memory = memory.repeat_interleave(T, dim=0)  # the same memory for each target of a clip

        # Target path: tokenize, keep M random tokens, prepend CLS, same encoder; no core (§3.1).
        tokens = self.tokenize(rearrange(target, "b t c h w -> (b t) c h w"))  # [(B T), N, D]
        if mask_perm is None:
            mask_perm = torch.rand(B * T, N, device=target.device).argsort(dim=1)
        else:
            mask_perm = torch.as_tensor(mask_perm, device=target.device).long()
            if mask_perm.ndim != 3 or mask_perm.shape[0] not in (1, B) or mask_perm.shape[1] not in (1, T) \
                    or mask_perm.shape[2] != N:
                raise ValueError(f"forward(mask_perm): expected [B or 1, T or 1, N] = [{B}, {T}, {N}], "
                                 f"got {tuple(mask_perm.shape)}")
            mask_perm = rearrange(mask_perm.expand(B, T, N), "b t n -> (b t) n")
        keep = mask_perm[:, :M]
        visible = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        encoded = self.decoder_embedder(self.encoder(self.with_cls(visible)))  # [(B T), M+1, dec]

        # Decoder queries (MAE): visible tokens back on the grid, [MASK] elsewhere, then Δ and positions.
        cls, x = encoded[:, :1], encoded[:, 1:]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(x.shape[0], N - M, -1)], dim=1)  # shuffled order
        restore = mask_perm.argsort(dim=1)
        x = torch.gather(x, 1, restore[..., None].expand(-1, -1, x.shape[-1]))  # back to grid order
        delta_onehot = F.one_hot(rearrange(deltas, "b t -> (b t)").long(), c.n_deltas).to(x.dtype)
        x = x + self.delta_embedder(delta_onehot)[:, None, :]
        x = x + self._positions_for("dec", h, w, x.device).to(x.dtype)
        x = self.decoder(torch.cat([cls, x], dim=1), memory)

        # Pixels: drop CLS, each token -> its P x P x 3 patch, laid out (row, col, channel).
        patches = self.detokenizer(x[:, 1:])
        reconstruction = rearrange(patches.float(), "(b t) (h w) (p q c) -> b t c (h p) (w q)",
                                   b=B, h=h, p=P, q=P, c=3)
        loss = F.mse_loss(reconstruction, target.float())  # mean over every pixel, float32 (§3.1 "Loss")
        mask = torch.ones(B * T, N, dtype=torch.bool, device=target.device)
        mask.scatter_(1, keep, False)
        return loss, reconstruction, rearrange(mask, "(b t) (h w) -> b t h w", b=B, h=h)

    # -- bookkeeping --

    def num_params(self, part="backbone"):
        """'backbone' counts what Table 5's "Total Params" counts (tokenizer + encoder + core,
        the parts kept after training); 'all' adds the decoder."""
        backbone = [self.tokenizer, self.encoder] + ([self.rnn_core] if self.config.aggregator == "rnn" else [])
        n = sum(p.numel() for m in backbone for p in m.parameters()) + self.cls_token.numel()
        return n if part == "backbone" else sum(p.numel() for p in self.parameters())

    def flops_per_example(self, image_size, n_source=4, n_target=4):
        """Forward+backward FLOPs of one training example (matmuls only, 3x the forward), as
        nanoGPT's estimate_mfu counts them: 2 FLOPs per multiply-add."""
        c = self.config
        N = (image_size // c.patch_size) ** 2
        n, m = N + 1, self.n_visible(N) + 1
        D, E = c.width, c.dec_width

        def vit(tokens, dim, mlp, depth):  # projections + attention scores/values
            return depth * (2 * tokens * (4 * dim * dim + 2 * dim * mlp) + 4 * tokens * tokens * dim)

        def xtx(q, kv, dim, mlp, depth):  # cross-attn + MLP + self-attn
            cross = 2 * q * 2 * dim * dim + 2 * kv * 2 * dim * dim + 4 * q * kv * dim
            return depth * (cross + vit(q, dim, mlp, 1))

        patch = 2 * N * 3 * c.patch_size ** 2 * D
        if c.aggregator == "rnn":
            src = n_source * (patch + vit(n, D, c.enc_mlp, c.enc_layers)
                              + 2 * n * 4 * D * D + xtx(n, n, D, c.core_mlp, c.core_layers))
        else:
            src = n_source * patch + vit(n_source * n, D, c.enc_mlp, c.enc_layers + c.core_layers)
        tgt_depth = c.enc_layers + (c.core_layers if c.aggregator == "attn" else 0)
        tgt = n_target * (patch + vit(m, D, c.enc_mlp, tgt_depth) + 2 * m * D * E)
        k = n_source if c.decoder_memory == "all" else 1  # source feature sets the decoder reads
        dec = n_target * (xtx(n, k * n, E, c.dec_mlp, c.dec_layers) + 2 * N * E * 3 * c.patch_size ** 2)
        dec += 2 * k * n * D * E  # embedding the memory
        return 3 * (src + tgt + dec)


# ----------------------------------------------------------------------------------------------
# Loading weights: the authors' released checkpoints, and ours.


def official_name(name):
    """Our state-dict name -> (their flat key, how to turn their array into ours)."""
    parts = name.split(".")
    leaf = parts[-1]
    path = []
    for p in parts[:-1]:
        if p.isdigit():
            path[-1] = f"{path[-1]}_{p}"  # layers.3 -> layers_3, xa_blocks.3 -> xa_blocks_3
        else:
            path.append(p)
    if path == ["tokenizer"]:
        return "tokenizer/patch_embedding/Conv_0/" + ("kernel" if leaf == "weight" else "bias"), "conv"
    if path == ["detokenizer"]:
        path = ["detokenizer", "Dense_0"]
    if path == ["encoder", "norm"]:
        path = ["encoder", "LayerNorm_0"]
    if leaf in ("cls_token", "mask_token"):
        return leaf, "token"
    is_norm = path[-1].endswith("norm") or path[-1] == "LayerNorm_0"
    if is_norm:
        return "/".join(path + ["scale" if leaf == "weight" else "bias"]), "plain"
    if path[-1] in ("query", "key", "value"):
        return "/".join(path + ["kernel" if leaf == "weight" else "bias"]), "qkv"
    if path[-1] == "out" and leaf == "weight":
        return "/".join(path + ["kernel"]), "attn_out"
    return "/".join(path + ["kernel" if leaf == "weight" else "bias"]), "dense"


def _from_official(array, how, ours_shape):
    a = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if how == "conv":
        a = a[0].permute(3, 2, 0, 1) if a.ndim == 5 else a  # [1, kh, kw, c_in, D] -> [D, c_in, kh, kw]
    elif how == "token":
        a = a.reshape(1, 1, -1)
    elif how == "qkv":  # kernel [in, heads, head_dim] -> [heads*head_dim, in]; bias [heads, head_dim]
        a = a.reshape(a.shape[0], -1).T if a.ndim == 3 else a.reshape(-1)
    elif how == "attn_out":  # [heads, head_dim, out] -> [out, heads*head_dim]
        a = a.reshape(-1, a.shape[-1]).T
    elif how == "dense" and a.ndim == 2:  # [in, out] -> [out, in]
        a = a.T
    if tuple(a.shape) != tuple(ours_shape):
        raise ValueError(f"shape {tuple(a.shape)} after conversion, expected {tuple(ours_shape)}")
    return a.contiguous()


def config_from_official(arrays, **overrides):
    """Infer the model size from the arrays' shapes (the released S/B/L/H and the micro file)."""
    def shape(key):
        if key not in arrays:
            raise ValueError(f"official checkpoint: missing key {key!r}")
        return arrays[key].shape

    def count(prefix):
        return len({k[len(prefix):].split("/")[0] for k in arrays if k.startswith(prefix)})

    kernel = shape("tokenizer/patch_embedding/Conv_0/kernel")
    cfg = dict(
        patch_size=kernel[1], width=kernel[-1],
        enc_layers=count("encoder/layers_"), enc_heads=shape("encoder/layers_0/attention/query/kernel")[1],
        enc_mlp=shape("encoder/layers_0/mlp/dense_in/kernel")[1],
        core_layers=count("rnn_core/transformer/xa_blocks_"),
        core_heads=shape("rnn_core/transformer/xa_blocks_0/ca_attention/query/kernel")[1],
        core_mlp=shape("rnn_core/transformer/xa_blocks_0/mlp/dense_in/kernel")[1],
        dec_width=shape("mask_token")[-1], dec_layers=count("decoder/xa_blocks_"),
        dec_heads=shape("decoder/xa_blocks_0/ca_attention/query/kernel")[1],
        dec_mlp=shape("decoder/xa_blocks_0/mlp/dense_in/kernel")[1],
        n_deltas=shape("delta_embedder/kernel")[0],
    )
    cfg.update(overrides)
    return RVMConfig(**{k: int(v) if isinstance(v, (np.integer,)) else v for k, v in cfg.items()})


def load_official(path_or_arrays, **config_overrides):
    """The authors' flat `/`-keyed arrays (their released `.npz`, or a dict) -> our RVM with every
    weight in place. The size is inferred from the shapes; `config_overrides` sets what shapes
    cannot tell (e.g. mask_ratio). A missing, unexpected or mis-shaped key is a ValueError naming it."""
    source = str(path_or_arrays) if not isinstance(path_or_arrays, dict) else "arrays"
    if isinstance(path_or_arrays, dict):
        arrays = dict(path_or_arrays)
    else:
        try:
            with np.load(path_or_arrays, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{source}: not a readable .npz checkpoint ({err})") from None
    # The reference file stores parameters under "param/"; released checkpoints have bare keys.
    if any(k.startswith("param/") for k in arrays):
        arrays = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    try:
        model = RVM(config_from_official(arrays, **config_overrides))
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    state, used = {}, set()
    for name, ours in model.state_dict().items():
        key, how = official_name(name)
        if key not in arrays:
            raise ValueError(f"{source}: missing key {key!r} (for our {name})")
        try:
            state[name] = _from_official(arrays[key], how, ours.shape)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"{source}: key {key!r} has shape {tuple(arrays[key].shape)}: {err}") from None
        used.add(key)
    unexpected = sorted(set(arrays) - used)
    if unexpected:
        raise ValueError(f"{source}: unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    model.load_state_dict(state)
    return model.eval()


def load_model(path, map_location="cpu", **config_overrides):
    """Any checkpoint -> RVM in eval mode: the authors' `.npz`, or a `.pt` saved by train.py
    (a dict with 'model' (state dict) and 'model_config' (RVMConfig fields))."""
    path = str(path)
    if path.endswith(".npz"):
        return load_official(path, **config_overrides)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as err:  # noqa: BLE001 -- any unreadable file gets the same clear message
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path}: expected a train.py checkpoint with 'model' and 'model_config' entries")
    known = {f.name for f in fields(RVMConfig)}
    cfg = {k: v for k, v in ckpt["model_config"].items() if k in known}
    cfg.update(config_overrides)
    model = RVM(RVMConfig(**cfg))
    model.load_state_dict(ckpt["model"])
    return model.eval()


if __name__ == "__main__":
    # Table 5 sizes, counted as the paper counts them (tokenizer + encoder + core).
    with torch.device("meta"):
        for name, (w, heads, layers, core_heads) in dict(S=(384, 6, 12, 8), B=(768, 12, 12, 12),
                                                         L=(1024, 16, 24, 16), H=(1280, 16, 32, 16)).items():
            m = RVM(RVMConfig(width=w, enc_heads=heads, enc_layers=layers, core_heads=core_heads))
            print(f"RVM-{name}: backbone {m.num_params() / 1e6:.1f}M, with decoder {m.num_params('all') / 1e6:.1f}M, "
                  f"{m.flops_per_example(256) / 1e12:.2f} TFLOPs per training example at 256 px")
