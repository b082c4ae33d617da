"""model.py: parity with the authors' model, the equations, causality, masking, loss, FLOPs,
errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import REFERENCE, ROOT
from model import RVM, RVMConfig, config_from_file, load_model, load_official, official_name

TINY = dict(patch_size=8, width=32, enc_layers=1, enc_heads=2, core_layers=1, core_heads=2,
            dec_width=32, dec_layers=1, dec_heads=2)


def tiny(**kw):
    torch.manual_seed(0)
    return RVM(RVMConfig(**{**TINY, **kw}))


def channels_first(a):
    return torch.from_numpy(np.asarray(a)).permute(0, 1, 4, 2, 3).contiguous()


# -- parity with the authors' implementation (tests/reference/README.md) --------------------------

@pytest.fixture(scope="module")
def ref():
    with np.load(REFERENCE / "official_micro_a.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def official():
    return load_official(REFERENCE / "official_micro_a.npz", mask_ratio=0.75)


def close(ours, theirs, tol=1e-5):
    theirs = torch.as_tensor(np.asarray(theirs))
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    err = (ours.float() - theirs.float()).abs().max().item()
    assert err <= tol, f"max abs error {err:.2e}"


def test_config_inferred_from_official_shapes(official):
    c = official.config
    assert (c.patch_size, c.width, c.enc_layers, c.enc_heads, c.enc_mlp) == (16, 32, 1, 2, 128)
    assert (c.core_layers, c.core_heads, c.core_mlp) == (2, 2, 128)
    assert (c.dec_width, c.dec_layers, c.dec_heads, c.dec_mlp, c.n_deltas) == (64, 2, 4, 256, 64)


def test_parity_intermediates(official, ref):
    frame0 = channels_first(ref["video"])[:, 0]
    close(official.positions(4, 4, "cpu")[0], ref["debug/posenc_encoder"].reshape(16, 32))
    close(official.positions(4, 4, "cpu")[1], ref["debug/posenc_decoder"].reshape(16, 64))
    with torch.no_grad():
        close(official.tokenizer(frame0).permute(0, 2, 3, 1), ref["debug/frame0_patch_embed_out"])
        close(official.tokenize(frame0), ref["debug/frame0_tokenizer_out"].reshape(1, 16, 32))
        close(official.encode(frame0), ref["debug/frame0_encoder_out"])


def test_parity_streaming_features_and_state(official, ref):
    video = channels_first(ref["video"])
    state, feats = None, []
    with torch.no_grad():
        for t in range(video.shape[1]):
            o, state = official.step(video[:, t], state)
            feats.append(o)
        close(torch.stack(feats, 1), ref["features"])
        close(state, ref["state"])
        close(official.features(video), ref["features"])
        close(official.stream_features(video[0]).flatten(1, 2), ref["features"][0, :, 1:])


def test_parity_reconstruction_with_injected_mask(official, ref):
    source, target = channels_first(ref["source"]), channels_first(ref["target"])
    with torch.no_grad():
        close(official.features(source), ref["recon_features"])
        loss, recon, mask = official(source, target, torch.from_numpy(ref["target_deltas"]),
                                     mask_perm=torch.from_numpy(ref["mask_perm"]))
    close(recon.permute(0, 1, 3, 4, 2), ref["reconstructed"])
    close(mask.float(), ref["mask"][..., 0], tol=0)
    expected = ((ref["reconstructed"] - ref["target"]) ** 2).mean()
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_loader_names_missing_unexpected_and_misshaped_keys(ref, tmp_path):
    params = {k[len("param/"):]: v for k, v in ref.items() if k.startswith("param/")}
    broken = dict(params)
    del broken["rnn_core/state_reset/kernel"]
    with pytest.raises(ValueError, match="rnn_core/state_reset/kernel"):
        load_official(broken)
    with pytest.raises(ValueError, match="decoder/extra/kernel"):
        load_official({**params, "decoder/extra/kernel": np.zeros((2, 2), np.float32)})
    bad = dict(params)
    bad["encoder/layers_0/mlp/dense_out/kernel"] = np.zeros((128, 31), np.float32)
    with pytest.raises(ValueError, match="encoder/layers_0/mlp/dense_out/kernel"):
        load_official(bad)
    # Files that are not the authors' weights: one clear line naming the file.
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((REFERENCE / "official_micro_a.npz").read_bytes()[:5000])
    (tmp_path / "text.npz").write_text("not an archive\n")
    for path in (truncated, tmp_path / "text.npz"):
        with pytest.raises(ValueError, match=f"{path.name}: not a readable .npz"):
            load_model(path)
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_model(tmp_path / "nothing.npz")


@pytest.mark.parametrize("size,paper,tol", [("s", 34e6, 0.10), ("b", 117e6, 0.10),
                                            ("l", 375e6, 0.01), ("h", 743e6, 0.01)])
def test_table5_configs_and_the_official_key_names(size, paper, tol):
    """configs/{s,b,l,h}.py hold Table 5; each builds the released checkpoint's parameters one to
    one."""
    with torch.device("meta"):  # no memory, no time: the big ones are only counted
        model = RVM(config_from_file(ROOT / "configs" / f"{size}.py"))
    # L, H within 1 %; S, B within 10 % (README)
    assert abs(model.num_params() - paper) / paper < tol
    theirs = {}
    for line in (REFERENCE / f"official_keys_{size.upper()}.txt").read_text().splitlines():
        key, shape = line.rsplit(" (", 1)
        theirs[key] = tuple(int(s) for s in shape.rstrip(",)").split(",") if s.strip())
    ours = {official_name(n)[0]: p.shape for n, p in model.state_dict().items()}
    assert set(ours) == set(theirs) and len(ours) == len(model.state_dict())  # one to one
    for key, shape in theirs.items():
        assert int(np.prod(shape)) == ours[key].numel(), key
    # overrides win
    shallow = config_from_file(ROOT / "configs" / f"{size}.py", enc_layers=1, mask_ratio=0.5)
    assert (shallow.enc_layers, shallow.mask_ratio, shallow.width) == (1, 0.5, model.config.width)


# -- the recurrence (§3.2) -------------------------------------------------------------------------

def test_core_step_equals_the_equations_by_hand():
    model = tiny()
    core = model.rnn_core
    e, s = torch.randn(2, 17, 32), torch.randn(2, 17, 32)
    gates = ("input_update", "state_update", "input_reset", "state_reset")
    W = {n: getattr(core, n).weight for n in gates}
    with torch.no_grad():
        u = torch.sigmoid(e @ W["input_update"].T + s @ W["state_update"].T)
        r = torch.sigmoid(e @ W["input_reset"].T + s @ W["state_reset"].T)
        ln_s = F.layer_norm(s, (32,), core.state_layer_norm.weight, None, eps=1e-4)
        expected = (1 - u) * s + u * core.transformer(e, r * ln_s)
        assert torch.allclose(core(e, s), expected, atol=1e-6)
        # the first step starts from s_0 = 0: s_1 = u ⊙ Tx(ê, 0)
        frame = torch.rand(2, 3, 32, 32)
        o, s1 = model.step(frame)
        enc = model.encode(frame)
        u0 = torch.sigmoid(enc @ W["input_update"].T)
        assert torch.allclose(s1, u0 * core.transformer(enc, torch.zeros_like(enc)), atol=1e-6)
        assert o is s1  # o_t = s_t


def test_block_order_cross_attention_mlp_self_attention():
    block = tiny().decoder.xa_blocks[0]
    x, mem = torch.randn(1, 5, 32), torch.randn(1, 7, 32)
    with torch.no_grad():
        y = x + block.ca_attention(block.ca_attention_norm(x), mem)
        y = y + block.mlp(block.mlp_norm(y))
        y = y + block.attention(block.attention_norm(y))
        assert torch.allclose(block(x, mem), y, atol=1e-6)


# -- streaming and causality ---------------------------------------------------------------------

def test_causality_and_streaming_equal_whole_video():
    model = tiny().eval()
    video = torch.rand(2, 6, 3, 32, 32)
    changed = video.clone()
    changed[:, 3:] = torch.rand_like(changed[:, 3:])
    with torch.no_grad():
        a, b = model.features(video), model.features(changed)
        assert torch.equal(a[:, :3], b[:, :3])  # bitwise: frames <= t never see frames > t
        assert not torch.allclose(a[:, 3:], b[:, 3:])
        state, stepped = None, []
        for t in range(6):
            o, state = model.step(video[:, t], state)
            stepped.append(o)
        # streaming a frame at a time computes what the whole video's batched encoder does
        assert torch.allclose(torch.stack(stepped, 1), a, atol=1e-5)
        streamed = model.stream_features(video[0])
        assert torch.allclose(streamed, a[0, :, 1:].unflatten(1, (4, 4)), atol=1e-5)
        # encoder-only features ignore the other frames entirely
        enc = model.features(changed, per_frame=True)
        assert torch.equal(enc[:, 3:], model.features(changed[:, 3:], per_frame=True))


def test_a_long_stream_keeps_a_state_of_one_frame():
    model = tiny().eval()
    state = None
    with torch.no_grad():
        for _ in range(100):
            o, state = model.step(torch.rand(1, 3, 16, 24), state)
    assert state.shape == (1, 2 * 3 + 1, 32) and torch.isfinite(state).all()


def test_480x880_video_streams_with_resized_positions():
    model = tiny(patch_size=16).eval()
    feats = model.stream_features(torch.rand(2, 3, 480, 880))
    assert feats.shape == (2, 30, 55, 32) and torch.isfinite(feats).all()
    # the resized table keeps the grid's order: a token's position is closer to its neighbour's than
    # to a far token's (parity with the authors' resize is tested at 16 -> 4 above)
    table = model.positions(30, 55, "cpu")[0]
    near, far = (F.cosine_similarity(table[0], table[i], dim=0) for i in (1, 30 * 55 - 1))
    assert near > far + 0.1


def test_attn_aggregator_ablation():
    model = tiny(aggregator="attn")
    # encoder + core depth (§9)
    assert not hasattr(model, "rnn_core") and len(model.encoder.layers) == 2
    loss, recon, _ = model(torch.rand(2, 2, 3, 16, 16), torch.rand(2, 1, 3, 16, 16),
                           torch.tensor([[5], [9]]))
    assert recon.shape == (2, 1, 3, 16, 16) and torch.isfinite(loss)
    with pytest.raises(ValueError, match="aggregator"):
        model.step(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("n_source", [1, 2, 4])
@pytest.mark.parametrize("memory", ["all", "last"])
def test_every_source_frame_reaches_the_reconstruction(n_source, memory):
    # 'all' (the paper): the decoder reads o_1..o_K; 'last': o_K alone, so earlier frames reach it
    # only through the core's state. Either way the loss depends on every source frame.
    model = tiny(decoder_memory=memory)
    source = torch.rand(2, n_source, 3, 16, 16, requires_grad=True)
    loss, recon, mask = model(source, torch.rand(2, 3, 3, 16, 16), torch.full((2, 3), n_source + 4))
    loss.backward()
    assert recon.shape == (2, 3, 3, 16, 16) and mask.shape == (2, 3, 2, 2)
    assert (source.grad.abs().flatten(2).sum(-1) > 0).all()
    seen = {}
    model.decoder.register_forward_hook(lambda mod, args, out: seen.update(memory=args[1]))
    model(source, torch.rand(2, 1, 3, 16, 16), torch.full((2, 1), n_source + 4))
    assert seen["memory"].shape[1] == (n_source if memory == "all" else 1) * (2 * 2 + 1)


# -- masking, loss, gradients, FLOPs ---------------------------------------------------------------

def test_masking_keeps_int_n_times_5_percent_tokens_different_per_sample():
    model = tiny(patch_size=4)  # 32x32 frames -> N = 64 tokens -> keep int(64 * 0.05) = 3
    torch.manual_seed(1)
    _, _, mask = model(torch.rand(8, 2, 3, 32, 32), torch.rand(8, 2, 3, 32, 32),
                       torch.full((8, 2), 10))
    visible = ~mask.flatten(2)
    assert (visible.sum(-1) == 3).all()
    # a draw per frame
    assert len({tuple(v.nonzero().flatten().tolist()) for v in visible.flatten(0, 1)}) > 1
    assert RVM(RVMConfig()).n_visible(256) == 12  # the paper's 256 px: 12 of 256


def test_injected_permutation_shows_exactly_its_first_tokens():
    model = tiny(patch_size=4, mask_ratio=0.75)  # 16x16 frames -> N = 16 tokens, 4 visible
    perm = torch.tensor([[[5, 0, 15, 9] + [i for i in range(16) if i not in (5, 0, 15, 9)]]])
    target = torch.rand(1, 1, 3, 16, 16)
    _, _, mask = model(torch.rand(1, 2, 3, 16, 16), target, torch.tensor([[6]]), mask_perm=perm)
    assert sorted((~mask.flatten()).nonzero().flatten().tolist()) == [0, 5, 9, 15]
    # a hidden patch's pixels do not reach the reconstruction except through the source frames
    changed = target.clone()
    changed[..., 4:8, 4:8] = 0  # patch 5 is visible: its change must show
    changed2 = target.clone()
    changed2[..., 4:8, 8:12] = 0  # patch 6 is hidden: its change must not
    with torch.no_grad():
        runs = [model(torch.zeros(1, 2, 3, 16, 16), t, torch.tensor([[6]]), mask_perm=perm)[1]
                for t in (target, changed, changed2)]
    assert not torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_loss_is_mean_over_every_pixel_and_all_parameters_get_gradients():
    model = tiny()
    source, target = torch.rand(2, 2, 3, 16, 16), torch.rand(2, 2, 3, 16, 16)
    loss, recon, _ = model(source, target, torch.tensor([[4, 20], [30, 63]]))
    assert torch.allclose(loss, ((recon - target) ** 2).mean())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_matches_float32():
    model = tiny()
    source, target = torch.rand(2, 2, 3, 16, 16), torch.rand(2, 2, 3, 16, 16)
    perm = torch.stack([torch.randperm(4) for _ in range(2)])[None].expand(2, 2, 4)
    deltas = torch.tensor([[5, 9], [7, 40]])
    loss32, _, _ = model(source, target, deltas, mask_perm=perm)
    loss32.backward()
    grad32 = model.tokenizer.weight.grad.clone()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, recon, _ = model(source, target, deltas, mask_perm=perm)
    # the loss in float32 (§4.1)
    assert loss16.dtype == torch.float32 and recon.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) / loss32.item() < 0.02
    loss16.backward()
    assert F.cosine_similarity(model.tokenizer.weight.grad.flatten(), grad32.flatten(), dim=0) > 0.9


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, ckpt = tiny(), tiny(grad_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    args = (torch.rand(2, 2, 3, 16, 16), torch.rand(2, 1, 3, 16, 16), torch.tensor([[5], [6]]))
    for m in (plain, ckpt):
        m(*args, mask_perm=torch.arange(4)[None, None])[0].backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), n


@pytest.mark.parametrize("aggregator,memory", [("rnn", "all"), ("rnn", "last"), ("attn", "all")])
def test_flops_estimate_counts_what_torch_executes(aggregator, memory):
    """flops_per_example against torch's own count of a training step's matmuls, forward and
    backward. The estimate counts the tokenizer's input gradient, which torch skips (frames need
    none): ~2 % here."""
    model = tiny(enc_layers=2, dec_width=48, dec_layers=2, aggregator=aggregator,
                 decoder_memory=memory, mask_ratio=0.75)
    source, target = torch.rand(2, 3, 3, 32, 32), torch.rand(2, 2, 3, 32, 32)
    # attention as matmuls
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(source, target, torch.tensor([[5, 9], [7, 40]]))[0].backward()
    estimate = 2 * model.flops_per_example(32, n_source=3, n_target=2)
    assert 1.0 < estimate / counter.get_total_flops() < 1.04


def test_tiny_model_overfits_one_clip():
    torch.manual_seed(0)
    model = tiny(width=64, enc_heads=4, mask_ratio=0.75)
    source, target = torch.rand(1, 2, 3, 16, 16), torch.rand(1, 2, 3, 16, 16)
    deltas, perm = torch.tensor([[5, 9]]), torch.arange(4)[None, None]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(300):
        loss = model(source, target, deltas, mask_perm=perm)[0]
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10


# -- initialisation: the authors' ---------------------------------------------------------------

def test_initialisation_is_the_authors():
    """Flax's initialisers as the authors' model uses them, at a width where spreads are sharp:
    attention, gates, embedders and tokenizer lecun_normal (std 1/sqrt(fan_in), truncated at 2 of
    its own std), MLP layers xavier_uniform (bound sqrt(6 / (fan_in + fan_out))), every bias 0, CLS
    and MASK N(0, 0.02), norms 1 and 0."""
    torch.manual_seed(0)
    D = 1024
    m = RVM(RVMConfig(width=D, enc_heads=16, core_heads=16, enc_layers=1, core_layers=1,
                      dec_layers=1))
    lecun = {"encoder.layers.0.attention.query": D, "encoder.layers.0.attention.out": D,
             "rnn_core.transformer.xa_blocks.0.ca_attention.key": D, "rnn_core.input_update": D,
             "rnn_core.state_reset": D, "decoder_embedder": D, "delta_embedder": 64,
             "detokenizer": 512, "decoder.xa_blocks.0.attention.value": 512,
             "tokenizer": 3 * 16 * 16}
    modules = dict(m.named_modules())
    for name, fan_in in lecun.items():
        w, std = modules[name].weight, fan_in ** -0.5
        assert w.std().item() == pytest.approx(std, rel=0.03), name
        # truncated at 2 std of the untruncated normal
        assert w.abs().max().item() <= 2 * std / 0.8796 + 1e-6, name
    for name in ("encoder.layers.0.mlp.dense_in", "rnn_core.transformer.xa_blocks.0.mlp.dense_out",
                 "decoder.xa_blocks.0.mlp.dense_in"):
        w = modules[name].weight
        bound = (6 / sum(w.shape)) ** 0.5
        assert w.abs().max().item() <= bound, name
        assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.03), name
    for name, module in modules.items():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and module.bias is not None:
            assert not module.bias.any(), name
        if isinstance(module, torch.nn.LayerNorm):
            assert (module.weight == 1).all(), name
            assert module.bias is None or not module.bias.any(), name
    for token in (m.cls_token, m.mask_token):
        assert token.std().item() == pytest.approx(0.02, rel=0.1)


# -- bad input: a ValueError that says what was expected ----------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda m: m.step(torch.rand(1, 3, 20, 16)), "multiple of the patch"),
    (lambda m: m.step(torch.rand(1, 4, 16, 16)), "3 colour channels"),
    (lambda m: m.step(torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8)), "float tensor"),
    (lambda m: m.step(torch.rand(1, 3, 16, 16), m.step(torch.rand(1, 3, 32, 32))[1]),
     "same batch size and frame"),
    (lambda m: m(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 1, 3, 16, 16), torch.tensor([[64]])),
     r"\[0, 64\)"),
    (lambda m: m(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 1, 3, 16, 16), torch.tensor([[-1]])),
     r"\[0, 64\)"),
    (lambda m: m(torch.rand(1, 2, 3, 16, 16), torch.rand(1, 1, 3, 16, 16), torch.tensor([5])),
     r"\[B, T\]"),
    (lambda m: m.features(torch.rand(1, 3, 16, 16)), r"\[B, T, 3, H, W\]"),
    (lambda m: RVM(RVMConfig(width=33)), "not divisible by enc_heads"),
])
def test_bad_input_raises_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny())


def test_our_checkpoint_round_trip_and_bad_files(tmp_path):
    from dataclasses import asdict
    model = tiny()
    ckpt = {"model": model.state_dict(), "model_config": asdict(model.config)}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    loaded = load_model(tmp_path / "ckpt.pt")
    frame = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.step(frame)[0], model.eval().step(frame)[0])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "half.pt").write_bytes((tmp_path / "ckpt.pt").read_bytes()[:2000])
    for name in ("junk.pt", "empty.pt", "half.pt"):
        with pytest.raises(ValueError, match=f"{name}: not a readable train.py checkpoint"):
            load_model(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
