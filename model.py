"""Recurrent Video Masked Autoencoders (RVM), the whole model in one file.

Zoran et al., "Recurrent Video Masked Autoencoders" (Google DeepMind). Section, equation and table
numbers refer to the paper. Where the paper leaves a choice open, we follow the authors' released
inference code (google-deepmind/representations4d), so that their checkpoints load into this
model (`load_official`); each such choice is stated where it is made.

The story, in the order the paper tells it (§3.1, Fig. 2):

    frame X_t --tokenize--> e_t --ViT encoder--> ê_t --recurrent core (§3.2)--> o_t = s_t
    target X_T --tokenize, mask 95 %--> visible tokens --the same encoder--> ê^T
    decoder(queries = ê^T back on the grid + [MASK], keys/values = o_1..o_K) --> X_T reconstructed
    loss = mean over every pixel of (reconstruction - X_T)^2

Shapes: frames are float tensors in [0, 1] (no mean/std normalisation), [B, 3, H, W] per frame
and [B, T, 3, H, W] per video. P is the patch size, N = (H/P)(W/P) patch tokens, D the encoder
width. Every token set carries a CLS token in front, so a frame has N + 1 tokens.
"""

import functools
import math
import os
import sys
import timeit
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint


@dataclass
class RVMConfig:
    # Defaults are RVM-S (Table 5); configs/{s,b,l,h}.py set the four sizes.
    patch_size: int = 16  # P: frames are cut into P x P patches
    width: int = 384  # D: encoder width, also the core's (Table 5: "RNN core dimension matches")
    enc_layers: int = 12  # ViT encoder blocks
    enc_heads: int = 6  # attention heads per encoder block
    enc_mlp: int = 0  # encoder MLP hidden size; 0 = 4 * width
    core_layers: int = 4  # cross-attention blocks in the core's transformer Tx (§3.2)
    core_heads: int = 8  # attention heads per core block
    core_mlp: int = 0  # 0 = 4 * width
    dec_width: int = 512  # decoder, the same for every size (Table 6)
    dec_layers: int = 8  # cross-attention blocks in the decoder
    dec_heads: int = 16  # attention heads per decoder block
    dec_mlp: int = 0  # 0 = 4 * dec_width
    mask_ratio: float = 0.95  # m: fraction of each target frame's patches hidden (§3.1)
    n_deltas: int = 64  # time gaps Δ are one-hot over [0, n_deltas): a 64-frame clip (§4.1)
    base_grid: int = 16  # the encoder's position table is built for this grid, resized to others
    aggregator: str = "rnn"  # 'rnn': RVM's recurrent core | 'attn': self-attention baseline (§9)
    decoder_memory: str = "all"  # the decoder reads 'all' of o_1..o_K (§3.1) | 'last', o_K only
    grad_checkpoint: bool = False  # recompute blocks in backward: less memory, ~1/3 more compute

    def __post_init__(self):
        self.enc_mlp = self.enc_mlp or 4 * self.width
        self.core_mlp = self.core_mlp or 4 * self.width
        self.dec_mlp = self.dec_mlp or 4 * self.dec_width
        for name, allowed in [("aggregator", ("rnn", "attn")), ("decoder_memory", ("all", "last"))]:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        stacks = [("enc", self.width, self.enc_heads), ("core", self.width, self.core_heads),
                  ("dec", self.dec_width, self.dec_heads)]
        for name, dim, heads in stacks:
            if dim % heads:
                raise ValueError(f"the {name} width {dim} is not divisible by {name}_heads={heads}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")


def config_from_file(path, **overrides):
    """The RVMConfig a config file describes (configs/*.py: plain Python, as train.py reads them);
    `overrides` win over the file."""
    namespace = {}
    try:
        exec(compile(open(path).read(), str(path), "exec"), namespace)
    except OSError as err:
        raise FileNotFoundError(f"config file {path}: {err.strerror}") from None
    except Exception as err:  # noqa: BLE001 -- a broken config file gets its name, not a trace
        raise ValueError(f"config file {path}: {type(err).__name__}: {err}") from None
    settings = {f.name: namespace[f.name] for f in fields(RVMConfig) if f.name in namespace}
    return RVMConfig(**{**settings, **overrides})


# Positions: fixed sin/cos tables, the paper's "Fourier positional encodings" (§3.1).


def sincos_table(n_positions, dim):
    """[n_positions, dim]: MAE's 1-D table as the authors compute it, in float64, sin on even and
    cos on odd channels (interleaved)."""
    pos = np.arange(n_positions, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
    return torch.from_numpy(np.where(j % 2 == 0, np.sin(angle), np.cos(angle))).float()


def encoder_positions(h, w, dim, base_grid=16):
    """The encoder's table [h*w, dim]: 1-D over the flattened base_grid x base_grid positions, laid
    on that grid and resized to h x w the way jax.image.resize(..., 'bicubic') does it in the
    authors' code (Keys cubic a = -0.5, antialiased when shrinking, edge weights renormalised).
    torch matches that only with antialias=True; plain bicubic differs by up to 1.0 at 16 -> 4."""
    table = sincos_table(base_grid * base_grid, dim)
    if (h, w) == (base_grid, base_grid):
        return table
    grid = rearrange(table, "(h w) d -> 1 d h w", h=base_grid).double()
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return rearrange(grid.float(), "1 d h w -> (h w) d")


# Building blocks. Attribute names are the authors' parameter names, so that their checkpoints
# map onto ours key by key (`official_name`).


class Attention(nn.Module):
    """Multi-head attention with biased query/key/value/out projections: self-attention when
    `context` is None, cross-attention to `context` otherwise."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        if context is None:  # q, k and v in one matmul: one pass over x instead of three
            weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
            bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
            q, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)
        else:
            q = self.query(x)
            k = self.key(context)
            v = self.value(context)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        # q is scaled by 1/sqrt(head_dim); the fused kernels keep the softmax in float32 under
        # bf16, as the paper asks (§4.1: "upcasting the loss and softmax computations").
        x = F.scaled_dot_product_attention(q, k, v)
        return self.out(rearrange(x, "b h n d -> b n (h d)"))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.dense_in = nn.Linear(dim, hidden)
        self.dense_out = nn.Linear(hidden, dim)

    def forward(self, x):
        # the authors' GELU is tanh's
        return self.dense_out(F.gelu(self.dense_in(x), approximate="tanh"))


def layer_norm(dim):
    return nn.LayerNorm(dim, eps=1e-6)  # the authors' epsilon, everywhere but the core's state norm


class ViTBlock(nn.Module):
    """Pre-LN ViT block, no dropout (§3.1 "Encoder"): x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.attention_norm, self.attention = layer_norm(dim), Attention(dim, heads)
        self.mlp_norm, self.mlp = layer_norm(dim), MLP(dim, mlp)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class CrossAttentionBlock(nn.Module):
    """The block of the core's Tx and of the decoder (§3.1 "Decoder", Table 6): cross-attention to
    `memory`, then MLP, then self-attention, each pre-normalised with a residual (the order of the
    paper's text, Table 6 and the authors' code; Listing 2 has another). `memory` is used as given,
    as in the authors' model: Tx gets the state normalised by the core, the decoder the embedded
    source features unnormalised."""

    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.ca_attention_norm, self.ca_attention = layer_norm(dim), Attention(dim, heads)
        self.mlp_norm, self.mlp = layer_norm(dim), MLP(dim, mlp)
        self.attention_norm, self.attention = layer_norm(dim), Attention(dim, heads)

    def forward(self, x, memory):
        x = x + self.ca_attention(self.ca_attention_norm(x), memory)
        x = x + self.mlp(self.mlp_norm(x))
        return x + self.attention(self.attention_norm(x))


def lecun_normal_(weight):
    """Flax's default kernel init: a normal truncated at 2 standard deviations, variance
    1 / fan_in."""
    std = math.sqrt(1 / nn.init._calculate_fan_in_and_fan_out(weight)[0]) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def run_blocks(blocks, x, *args, grad_checkpoint=False):
    """x through each block; with grad_checkpoint, each block's activations are recomputed in the
    backward pass instead of stored (the core's backpropagation through time fills memory, §5)."""
    recompute = None
    if grad_checkpoint and torch.is_grad_enabled():
        recompute = functools.partial(checkpoint, use_reentrant=False)
        if x.device.type == "xla":  # torch_xla's own: XLA could merge torch's recomputation away
            from torch_xla.utils.checkpoint import checkpoint as recompute
    for block in blocks:
        x = recompute(block, x, *args) if recompute else block(x, *args)
    return x


class Encoder(nn.Module):
    """The ViT encoder, shared by every source and target frame (§3.1, after SiamMAE)."""

    def __init__(self, dim, depth, heads, mlp, grad_checkpoint=False):
        super().__init__()
        self.layers = nn.ModuleList(ViTBlock(dim, heads, mlp) for _ in range(depth))
        self.norm = layer_norm(dim)
        self.grad_checkpoint = grad_checkpoint

    def forward(self, x):
        return self.norm(run_blocks(self.layers, x, grad_checkpoint=self.grad_checkpoint))


class CrossTransformer(nn.Module):
    """CrossAttentionBlocks and a final LayerNorm: the core's Tx (§3.2), and the decoder."""

    def __init__(self, dim, depth, heads, mlp, grad_checkpoint=False):
        super().__init__()
        self.xa_blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, mlp) for _ in range(depth))
        self.output_norm = layer_norm(dim)
        self.grad_checkpoint = grad_checkpoint

    def forward(self, x, memory):
        x = run_blocks(self.xa_blocks, x, memory, grad_checkpoint=self.grad_checkpoint)
        return self.output_norm(x)


class RecurrentCore(nn.Module):
    """The gated transformer core of §3.2: GRU gates around a cross-attention transformer Tx."""

    def __init__(self, dim, depth, heads, mlp, grad_checkpoint=False):
        super().__init__()
        # The four W of the gates, bias-free, applied to the feature dimension of every token.
        self.input_update = nn.Linear(dim, dim, bias=False)  # W_e^u
        self.state_update = nn.Linear(dim, dim, bias=False)  # W_s^u
        self.input_reset = nn.Linear(dim, dim, bias=False)  # W_e^r
        self.state_reset = nn.Linear(dim, dim, bias=False)  # W_s^r
        # Not in the paper's equations: the authors' model normalises the state before Tx reads
        # it (eps 1e-4, a scale but no bias). Their checkpoints need it.
        self.state_layer_norm = nn.LayerNorm(dim, eps=1e-4, bias=False)
        self.transformer = CrossTransformer(dim, depth, heads, mlp, grad_checkpoint)  # Tx

    def forward(self, e, state):
        """One step: the encoded frame ê_t and the state s_{t-1}, both [B, N+1, D] -> s_t = o_t."""
        # u_t = σ(W_e^u ê_t + W_s^u s_{t-1}),  r_t = σ(W_e^r ê_t + W_s^r s_{t-1})
        update_gate = torch.sigmoid(self.input_update(e) + self.state_update(state))
        reset_gate = torch.sigmoid(self.input_reset(e) + self.state_reset(state))
        # ĥ_t = Tx(q = ê_t, kv = r_t ⊙ s_{t-1})  (the state layer-normalised first, see above)
        h = self.transformer(e, reset_gate * self.state_layer_norm(state))
        # s_t = (1 − u_t) ⊙ s_{t-1} + u_t ⊙ ĥ_t,  o_t = s_t
        return (1 - update_gate) * state + update_gate * h


# The model.


class RVM(nn.Module):
    def __init__(self, config: RVMConfig):
        super().__init__()
        self.config = c = config
        D, P = c.width, c.patch_size
        # Tokenizer (§3.1): a linear projection of each P x P patch, shared by all frames.
        self.tokenizer = nn.Conv2d(3, D, kernel_size=P, stride=P)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        # The attn baseline has no core; its one ViT gets the core's layers instead (§9).
        depth = c.enc_layers + (c.core_layers if c.aggregator == "attn" else 0)
        self.encoder = Encoder(D, depth, c.enc_heads, c.enc_mlp, c.grad_checkpoint)
        if c.aggregator == "rnn":
            self.rnn_core = RecurrentCore(D, c.core_layers, c.core_heads, c.core_mlp,
                                          c.grad_checkpoint)
        # Decoder (§3.1, Table 6). One linear layer embeds both the encoded target and the source
        # features.
        self.decoder_embedder = nn.Linear(D, c.dec_width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, c.dec_width) * 0.02)
        self.delta_embedder = nn.Linear(c.n_deltas, c.dec_width)  # the time gap Δ, one-hot in
        self.decoder = CrossTransformer(c.dec_width, c.dec_layers, c.dec_heads, c.dec_mlp,
                                        c.grad_checkpoint)
        self.detokenizer = nn.Linear(c.dec_width, P * P * 3)
        self._positions = {}  # (h, w, device) -> the two position tables, built on first use
        # The authors' initialisation (their Flax model; the paper states none): MLP layers
        # xavier_uniform, every other kernel (attention, gates, embedders, tokenizer) Flax's
        # lecun_normal, biases 0; CLS, MASK N(0, 0.02).
        for name, m in self.named_modules():
            if not isinstance(m, (nn.Linear, nn.Conv2d)):
                continue
            if name.split(".")[-2:-1] == ["mlp"]:  # mlp.dense_in, mlp.dense_out
                nn.init.xavier_uniform_(m.weight)
            else:
                lecun_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def positions(self, h, w, device):
        """The position tables (encoder [h*w, width], decoder [h*w, dec_width]) of an h x w grid,
        built once per grid and device. Under torch.compile, build them before the first step:
        tables built inside the compiled graph make the second step compile again. The decoder's
        is a fresh 1-D table for the target's grid, never resized."""
        key = (h, w, str(device))
        if key not in self._positions:
            c = self.config
            tables = encoder_positions(h, w, c.width, c.base_grid), sincos_table(h * w, c.dec_width)
            self._positions[key] = tuple(t.to(device) for t in tables)
        return self._positions[key]

    def blocks(self):
        """The transformer blocks in order: what FSDP shards one by one (§4.1), each gathered just
        before it runs."""
        core = []
        if self.config.aggregator == "rnn":
            core = list(self.rnn_core.transformer.xa_blocks)
        return [*self.encoder.layers, *core, *self.decoder.xa_blocks]

    # -- tokenizer and encoder (§3.1) --

    def tokenize(self, frames):
        """[B, 3, H, W] -> patch tokens [B, N, D], positions added (the CLS token gets none)."""
        x = self.tokenizer(frames)
        h, w = x.shape[-2:]
        x = rearrange(x, "b d h w -> b (h w) d")
        return x + self.positions(h, w, frames.device)[0].to(x.dtype)

    def with_cls(self, tokens):
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        return torch.cat([cls, tokens], dim=1)

    def encode(self, frames):
        """Encoder features ê [B, N+1, D] of frames [B, 3, H, W]: what an image model sees."""
        self._check_frames(frames, "frames", ndim=4)
        return self.encoder(self.with_cls(self.tokenize(frames)))

    # -- streaming: the core makes the model online (§3) --

    def step(self, frame, state=None):
        """One frame [B, 3, H, W] and the state s_{t-1} (None at the start: s_0 = 0) -> (features
        o_t [B, N+1, D], state s_t). Its cost does not depend on how many frames came before."""
        if self.config.aggregator != "rnn":
            raise ValueError("step() needs aggregator='rnn': the 'attn' baseline attends over all "
                             "frames at once")
        e = self.encode(frame)
        if state is None:
            state = torch.zeros_like(e)
        elif state.shape != e.shape:
            raise ValueError(f"step(): the state has shape {tuple(state.shape)} but this frame "
                             f"gives {tuple(e.shape)}; a state continues only a video of the same "
                             "batch size and frame size")
        state = self.rnn_core(e, state.to(e.dtype))
        return state, state  # o_t = s_t

    def features(self, video, per_frame=False):
        """Every frame's features, [B, T, 3, H, W] -> [B, T, N+1, D] (token 0 is CLS): o_1..o_T,
        the encoder run on all T frames as one batch, then the core unrolled from s_0 = 0 (§3.1),
        so frame t never sees a later frame (the attn baseline: one ViT over all frames, §9);
        per_frame: ê_t alone."""
        self._check_frames(video, "video", ndim=5)
        if self.config.aggregator == "attn" and not per_frame:
            return self._attn_features(video)
        e = self.encode(rearrange(video, "b t c h w -> (b t) c h w"))
        e = rearrange(e, "(b t) n d -> t b n d", b=video.shape[0])
        if per_frame:
            return rearrange(e, "t b n d -> b t n d")
        state, outputs = torch.zeros_like(e[0]), []
        for e_t in e:
            state = self.rnn_core(e_t, state)
            outputs.append(state)  # o_t = s_t
        return torch.stack(outputs, dim=1)

    @torch.no_grad()
    def stream_features(self, frames, per_frame=False):
        """The frames [3, H, W] of one video, from any iterable, a frame at a time -> patch
        features o_t [T, h, w, D] in float32, CLS dropped (per_frame: ê_t). The cost per frame
        does not grow with the video's length; every frame's features are returned."""
        out, state = [], None
        for frame in frames:
            if per_frame:
                o = self.encode(frame[None])
            else:
                o, state = self.step(frame[None], state)
            out.append(o[0, 1:].float())
        if not out:
            raise ValueError("stream_features(): the video has no frames")
        grid = [n // self.config.patch_size for n in frame.shape[-2:]]
        return torch.stack(out).unflatten(1, grid)

    def _attn_features(self, video):
        """The §9 baseline: every frame's tokens (with CLS) concatenated, a time embedding added
        (§9: positions "augmented with a time dimension"; the sin/cos table is ours), one ViT over
        all of them, split per frame."""
        B, T = video.shape[:2]
        tokens = self.with_cls(self.tokenize(rearrange(video, "b t c h w -> (b t) c h w")))
        tokens = rearrange(tokens, "(b t) n d -> b t n d", b=B)
        tokens = tokens + sincos_table(T, self.config.width).to(tokens)[None, :, None, :]
        x = self.encoder(rearrange(tokens, "b t n d -> b (t n) d"))
        return rearrange(x, "b (t n) d -> b t n d", t=T)

    # -- training (§3.1, Fig. 2) --

    def forward(self, source, target, deltas, mask_perm=None):
        """The training objective, the paper's chain of steps.

        source [B, K, 3, H, W], target [B, T, 3, H, W], deltas [B, T]: each target's frame offset
        from the FIRST source frame (the authors' convention; 0 <= Δ < n_deltas). `mask_perm`
        [B or 1, T or 1, N] injects the masking (position j of the shuffle holds token
        mask_perm[..., j]; the first M stay visible); by default one is drawn per sample and target
        frame (the authors share one per batch). Returns (loss, reconstruction [B, T, 3, H, W],
        mask [B, T, h, w] with True = hidden)."""
        # the time gaps are checked on the host (train.py hands them over there)
        deltas = torch.as_tensor(deltas).cpu()
        self._check_inputs(source, target, deltas, mask_perm)
        B, T, _, H, W = target.shape
        N = (H // self.config.patch_size) * (W // self.config.patch_size)
        if mask_perm is None:
            mask_perm = torch.rand(B * T, N, device=target.device).argsort(dim=1)
        else:
            mask_perm = torch.as_tensor(mask_perm).to(target.device).long().expand(B, T, N)
            mask_perm = rearrange(mask_perm, "b t n -> (b t) n")
        # o_1..o_K, the decoder's keys/values
        memory = self.source_memory(source, n_targets=T)
        # ê^T: the M visible target tokens
        visible = self.encode_visible(target, mask_perm)
        reconstruction = self.decode(visible, mask_perm, deltas, memory, target.shape)
        # §3.1 "Loss": every pixel, float32, no patch norm
        loss = F.mse_loss(reconstruction, target.float())
        return loss, reconstruction, self.hidden_patches(mask_perm, target.shape)

    def n_visible(self, n_tokens):
        # M = ⌊(1 − m) N⌋ in Python floats, as theirs
        return int(n_tokens * (1 - self.config.mask_ratio))

    def source_memory(self, source, n_targets):
        """The decoder's keys/values: the source features o_1..o_K, CLS included, concatenated along
        the token axis (§3.1) and embedded, one copy per target frame: [B*T, K*(N+1), dec_width].
        decoder_memory='last' keeps o_K alone (ours, for the demo: configs/noise_square.py)."""
        o = self.features(source)
        if self.config.decoder_memory == "last":
            o = o[:, -1:]
        memory = self.decoder_embedder(rearrange(o, "b k n d -> b (k n) d"))
        return memory.repeat_interleave(n_targets, dim=0)

    def encode_visible(self, target, mask_perm):
        """Target frames [B, T, 3, H, W] -> ê^T [B*T, M+1, dec_width]: the first M tokens of each
        shuffle and CLS through the shared encoder, embedded for the decoder. Targets do not pass
        through the core (§3.1)."""
        tokens = self.tokenize(rearrange(target, "b t c h w -> (b t) c h w"))
        keep = mask_perm[:, :self.n_visible(tokens.shape[1])]
        visible = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.decoder_embedder(self.encoder(self.with_cls(visible)))

    def decode(self, visible, mask_perm, deltas, memory, target_shape):
        """The MAE decoder (§3.1 "Decoder", Table 6): the visible tokens back on their grid
        positions, a learned [MASK] token everywhere else, + the time gap's embedding + positions,
        the target's CLS in front; cross-attention to the source memory; each token -> its
        P x P x 3 pixels."""
        B, T, _, H, W = target_shape
        c, P = self.config, self.config.patch_size
        cls, x = visible[:, :1], visible[:, 1:]
        N = mask_perm.shape[1]
        mask_tokens = self.mask_token.to(x.dtype).expand(x.shape[0], N - x.shape[1], -1)
        x = torch.cat([x, mask_tokens], dim=1)
        unshuffle = mask_perm.argsort(dim=1)[..., None].expand(-1, -1, x.shape[-1])
        x = torch.gather(x, 1, unshuffle)
        onehot = F.one_hot(rearrange(deltas, "b t -> (b t)").to(x.device).long(), c.n_deltas)
        x = x + self.delta_embedder(onehot.to(x.dtype))[:, None, :]  # Δ on the patch tokens only
        x = x + self.positions(H // P, W // P, x.device)[1].to(x.dtype)
        x = self.decoder(torch.cat([cls, x], dim=1), memory)
        # CLS dropped; a patch's pixels are (row, column, channel)
        patches = self.detokenizer(x[:, 1:])
        return rearrange(patches.float(), "(b t) (h w) (p q c) -> b t c (h p) (w q)",
                         b=B, h=H // P, p=P, q=P)

    def hidden_patches(self, mask_perm, target_shape):
        """[B, T, h, w], True where a target patch was hidden from the encoder."""
        B, _, _, H, W = target_shape
        keep = mask_perm[:, :self.n_visible(mask_perm.shape[1])]
        hidden = torch.ones_like(mask_perm, dtype=torch.bool).scatter_(1, keep, False)
        return rearrange(hidden, "(b t) (h w) -> b t h w", b=B, h=H // self.config.patch_size)

    # -- input checks, in one place: a wrong input stops here with a message, not deep in torch --

    def _check_frames(self, x, what, ndim):
        P = self.config.patch_size
        shape = "[B, 3, H, W]" if ndim == 4 else "[B, T, 3, H, W]"
        if not (torch.is_tensor(x) and x.is_floating_point()):
            got = getattr(x, "dtype", type(x).__name__)
            raise ValueError(f"{what}: expected a float tensor {shape} with values in [0, 1], got "
                             f"{got} (convert uint8 frames with x.float() / 255)")
        if x.ndim != ndim or x.shape[-3] != 3 or x.shape[-2] % P or x.shape[-1] % P:
            raise ValueError(f"{what}: expected shape {shape} with 3 colour channels, H and W each "
                             f"a multiple of the patch size {P}; got {tuple(x.shape)}")

    def _check_inputs(self, source, target, deltas, mask_perm):
        self._check_frames(source, "source", ndim=5)
        self._check_frames(target, "target", ndim=5)
        B, T, _, H, W = target.shape
        N = (H // self.config.patch_size) * (W // self.config.patch_size)
        if source.shape[0] != B or source.shape[-2:] != target.shape[-2:]:
            raise ValueError(f"source {tuple(source.shape)} and target {tuple(target.shape)} must "
                             "share batch and frame size")
        # The authors' one-hot turns a Δ out of range into zeros, silently; ours refuses it.
        n = self.config.n_deltas
        if deltas.shape != (B, T) or deltas.min() < 0 or deltas.max() >= n:
            raise ValueError(f"deltas: expected [B, T] = [{B}, {T}] time gaps in [0, {n}), got "
                             f"shape {tuple(deltas.shape)} and values "
                             f"{deltas.min().item()}..{deltas.max().item()}")
        if mask_perm is None:
            return
        shape = tuple(torch.as_tensor(mask_perm).shape)
        if len(shape) != 3 or shape[0] not in (1, B) or shape[1] not in (1, T) or shape[2] != N:
            raise ValueError(f"mask_perm: expected [B or 1, T or 1, N] = [{B}, {T}, {N}], "
                             f"got {shape}")

    # -- bookkeeping --

    def num_params(self, part="backbone"):
        """'backbone': what Table 5's "Total Params" counts (tokenizer, encoder and core: the parts
        kept after training); 'all' adds the decoder."""
        if part == "all":
            return sum(p.numel() for p in self.parameters())
        kept = [self.tokenizer, self.encoder]
        if self.config.aggregator == "rnn":
            kept.append(self.rnn_core)
        return sum(p.numel() for m in kept for p in m.parameters()) + self.cls_token.numel()

    def flops_per_example(self, image_size, n_source=4, n_target=4):
        """FLOPs of one training example, forward and backward: the matmuls (attention included),
        2 FLOPs per multiply-add, backward = 2x forward, as nanoGPT's estimate_mfu counts them."""
        c = self.config
        D, E = c.width, c.dec_width
        N = (image_size // c.patch_size) ** 2
        n = N + 1  # a frame's tokens
        m = self.n_visible(N) + 1  # a masked target frame's

        def vit(tokens, dim, mlp, depth):  # projections + attention scores and values
            return depth * (2 * tokens * (4 * dim * dim + 2 * dim * mlp)
                            + 4 * tokens * tokens * dim)

        def cross(q, kv, dim, mlp, depth):
            # cross-attention (q, out from q; k, v from kv) + MLP + self-attention
            return depth * (4 * q * dim * dim + 4 * kv * dim * dim + 4 * q * kv * dim
                            + vit(q, dim, mlp, 1))

        patch = 2 * N * 3 * c.patch_size ** 2 * D
        if c.aggregator == "rnn":  # per source frame: encoder, four gates, Tx
            src = n_source * (patch + vit(n, D, c.enc_mlp, c.enc_layers) + 8 * n * D * D
                              + cross(n, n, D, c.core_mlp, c.core_layers))
        else:
            src = n_source * patch + vit(n_source * n, D, c.enc_mlp, c.enc_layers + c.core_layers)
        tgt = n_target * (patch + vit(m, D, c.enc_mlp, len(self.encoder.layers)) + 2 * m * D * E)
        k = n_source if c.decoder_memory == "all" else 1
        dec = n_target * (cross(n, k * n, E, c.dec_mlp, c.dec_layers)
                          + 2 * N * E * 3 * c.patch_size ** 2)
        return 3 * (src + tgt + dec + 2 * k * n * D * E)  # the last term embeds the memory


def peak_flops(device, dtype=torch.bfloat16):
    """The FLOP/s that MFU is counted against: on CUDA the datasheet's dense bf16 peak (an A100's
    312 TFLOP/s, else an H100's or H200's 989), on a CPU what a dense matmul reaches here (best of
    8, ~0.3 s), elsewhere unknown (None)."""
    device = torch.device(device)
    if device.type == "cuda":
        return 312e12 if "A100" in torch.cuda.get_device_name(device) else 989e12
    if device.type != "cpu":
        return None
    a = torch.full((1024, 1024), 0.5, dtype=dtype)  # not randn: leaves the random state alone
    return 2 * 1024 ** 3 / min(timeit.repeat(lambda: a @ a, number=1, repeat=8))


# Weights: the authors' released checkpoints (a flat .npz of `/`-joined keys), and ours.


def official_name(name):
    """Our state-dict name -> (their flat key, how to turn their array into ours)."""
    *parts, leaf = name.split(".")
    path = []
    for p in parts:
        if p.isdigit():
            path[-1] += f"_{p}"  # layers.3 -> layers_3, xa_blocks.3 -> xa_blocks_3
        else:
            path.append(p)
    if leaf in ("cls_token", "mask_token"):
        return leaf, "token"
    if path == ["tokenizer"]:
        leaf = "kernel" if leaf == "weight" else "bias"
        return f"tokenizer/patch_embedding/Conv_0/{leaf}", "conv"
    renamed = {("detokenizer",): ["detokenizer", "Dense_0"],
               ("encoder", "norm"): ["encoder", "LayerNorm_0"]}
    path = renamed.get(tuple(path), path)
    if path[-1].endswith("norm") or path[-1] == "LayerNorm_0":
        return "/".join(path + ["scale" if leaf == "weight" else "bias"]), "plain"
    key = "/".join(path + ["kernel" if leaf == "weight" else "bias"])
    if path[-1] in ("query", "key", "value"):
        return key, "qkv"
    return key, "attn_out" if path[-1] == "out" and leaf == "weight" else "dense"


def _from_official(array, how, shape):
    """Their layout -> ours: dense kernels are [in, out] (ours [out, in]); attention q/k/v kernels
    [in, heads, head_dim] and biases [heads, head_dim]; the out kernel [heads, head_dim, out]; the
    patch embedding a 3-D conv kernel [1, P, P, 3, D]; tokens [1, D]."""
    a = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if how == "conv" and a.ndim == 5:
        a = a[0].permute(3, 2, 0, 1)
    elif how == "token":
        a = a.reshape(1, 1, -1)
    elif how == "qkv":
        a = a.reshape(a.shape[0], -1).T if a.ndim == 3 else a.reshape(-1)
    elif how == "attn_out":
        a = a.reshape(-1, a.shape[-1]).T
    elif how == "dense" and a.ndim == 2:
        a = a.T
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"shape {tuple(a.shape)} after conversion, expected {tuple(shape)}")
    return a.contiguous()


def config_from_official(arrays, **overrides):
    """The model size, read off the arrays' shapes (their S/B/L/H, and the micro reference file)."""
    def shape(key):
        if key not in arrays:
            raise ValueError(f"missing key {key!r}")
        return arrays[key].shape

    def count(prefix):
        return len({k[len(prefix):].split("/")[0] for k in arrays if k.startswith(prefix)})

    def heads(stack):
        attention = "ca_attention" if "xa_" in stack else "attention"
        return shape(f"{stack}/{attention}/query/kernel")[1]

    def mlp(stack):
        return shape(f"{stack}/mlp/dense_in/kernel")[1]

    kernel = shape("tokenizer/patch_embedding/Conv_0/kernel")
    core = "rnn_core/transformer/xa_blocks_0"
    cfg = dict(patch_size=kernel[1], width=kernel[-1],
               enc_layers=count("encoder/layers_"), enc_heads=heads("encoder/layers_0"),
               enc_mlp=mlp("encoder/layers_0"),
               core_layers=count("rnn_core/transformer/xa_blocks_"), core_heads=heads(core),
               core_mlp=mlp(core),
               dec_width=shape("mask_token")[-1], dec_layers=count("decoder/xa_blocks_"),
               dec_heads=heads("decoder/xa_blocks_0"), dec_mlp=mlp("decoder/xa_blocks_0"),
               n_deltas=shape("delta_embedder/kernel")[0])
    return RVMConfig(**{k: int(v) for k, v in cfg.items()}, **overrides)


def load_official(path_or_arrays, **config_overrides):
    """The authors' weights (their released .npz, or a dict of its arrays) -> our RVM, every
    weight in place, in eval mode. The size is read off the shapes; `config_overrides` set what
    shapes cannot tell (mask_ratio, say). A missing, unexpected or misshaped key is a ValueError
    naming it."""
    if isinstance(path_or_arrays, dict):
        where, arrays = "arrays", dict(path_or_arrays)
    else:
        where = str(path_or_arrays)
        try:
            with np.load(path_or_arrays, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: no such file") from None
        except Exception as err:  # noqa: BLE001 -- a truncated zip, a pickle, text: one message
            raise ValueError(f"{where}: not a readable .npz of the authors' weights "
                             f"({type(err).__name__})") from None
    if any(k.startswith("param/") for k in arrays):  # the reference file keeps them under param/
        arrays = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    try:
        model = RVM(config_from_official(arrays, **config_overrides))
        state, used = {}, set()
        for name, ours in model.state_dict().items():
            key, how = official_name(name)
            if key not in arrays:
                raise ValueError(f"missing key {key!r} (our {name})")
            try:
                state[name] = _from_official(arrays[key], how, ours.shape)
            except (ValueError, RuntimeError) as err:
                shape = tuple(arrays[key].shape)
                raise ValueError(f"key {key!r} of shape {shape}: {err}") from None
            used.add(key)
        unexpected = sorted(set(arrays) - used)
        if unexpected:
            more = " ..." if len(unexpected) > 5 else ""
            raise ValueError(f"unexpected keys {unexpected[:5]}{more}")
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    model.load_state_dict(state)
    return model.eval()


def load_model(path, **config_overrides):
    """Any checkpoint -> RVM in eval mode, on the CPU: the authors' .npz, or a .pt from train.py
    (a dict with 'model', the state dict, and 'model_config', the RVMConfig fields)."""
    path = str(path)
    if path.endswith(".npz"):
        return load_official(path, **config_overrides)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as err:  # noqa: BLE001 -- empty, truncated or not ours: one message
        raise ValueError(f"{path}: not a readable train.py checkpoint ({type(err).__name__}); "
                         "it may be truncated or another kind of file") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path}: not a train.py checkpoint (no 'model' and 'model_config' "
                         "entries)")
    known = {f.name for f in fields(RVMConfig)}
    settings = {k: v for k, v in ckpt["model_config"].items() if k in known}
    model = RVM(RVMConfig(**{**settings, **config_overrides}))
    model.load_state_dict(ckpt["model"])
    model.trained_with = ckpt.get("config", {})  # train.py's settings (its image_size, say)
    return model.eval()


# What the command-line scripts share: eval_labelprop.py and visualize.py.


def named_model(ckpt=None, untrained=None, seed=0):
    """The model of a command line's --ckpt (a .pt of train.py's or the authors' .npz) or
    --untrained (a config file: a new model of its size, seeded) -> (the model in eval mode, a name
    for its outputs: out/<run>/ckpt.pt is <run>)."""
    path = Path(ckpt or untrained)
    if untrained:
        torch.manual_seed(seed)
        return RVM(config_from_file(untrained)).eval(), f"untrained-{path.stem}"
    return load_model(ckpt), path.parent.name if path.stem == "ckpt" else path.stem


# Tokens per frame above which eval_labelprop.py stops (label propagation keeps an N x N
# neighbourhood mask: 256 MB at N = 16,384) and visualize.py warns (attention is quadratic in N).
MAX_TOKENS = 16384


def run_script(main, name, errors):
    """A script's main() as its command line runs it: an error of the kinds in `errors` (bad input)
    ends the process in one line naming the script, not a traceback (RVM_TRACEBACK=1: the trace)."""
    try:
        main()
    except errors as err:
        if os.environ.get("RVM_TRACEBACK"):
            raise
        sys.exit(f"{name}: {err}")


if __name__ == "__main__":
    # python model.py configs/s.py configs/b.py ...: each size counted as Table 5 counts it.
    for path in sys.argv[1:] or ["configs/s.py", "configs/b.py", "configs/l.py", "configs/h.py"]:
        with torch.device("meta"):  # no memory, no time
            m = RVM(config_from_file(path))
        print(f"{path}: backbone {m.num_params() / 1e6:.1f}M, "
              f"with decoder {m.num_params('all') / 1e6:.1f}M, "
              f"{m.flops_per_example(256) / 1e12:.2f} TFLOPs per training example at 256 px")
