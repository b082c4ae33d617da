"""Speed and memory of rvm, side by side with what a user would pick instead. Settings: --name=value.

    python bench.py                                   # every section: a table on stdout and bench.json
    python bench.py --only=train --compile --bf16_weights --batch=128   # the training step's variants
    python bench.py --quick                           # smaller sizes: a smoke run

Every figure is a rate or a ratio measured in this run on this machine (docs/bench.md keeps the runs):
  encoder   -- our per-frame encoder against timm's VisionTransformer of the same size: images/s,
               forward and forward+backward (float32 on CPU, bf16 on GPU; timm is a bench-only extra).
  train     -- one training step of configs/s.py (configs/b.py on a GPU): FLOP/s from
               model.flops_per_example over model.peak_flops (the matmul rate here, or the datasheet's).
  stream    -- per-frame time and peak memory of streaming features at 16..512 frames, for the rnn core
               (a constant-size state) and the attn baseline (one ViT over every frame, §9), each case in
               its own process so that its peak memory is its own.
  labelprop -- seconds per frame of label propagation on a DAVIS-sized grid (480x880) at the paper's settings.
  data      -- loader examples/s with 0/1/2 workers on a folder of H.264 mp4s, and decoding an example's
               8 frames against its whole 64-frame window; from 854x480 JPEG frames, a clip at 64-256 px
               made from whole frames against frames the decoder scales down (data.py, min_side).
"""

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from model import RVM, config_from_file, peak_flops

ROOT = os.path.dirname(os.path.abspath(__file__))
GPU = torch.cuda.is_available()
DEVICE, DTYPE = (torch.device("cuda"), torch.bfloat16) if GPU else (torch.device("cpu"), torch.float32)


def size(name, **overrides):
    return config_from_file(os.path.join(ROOT, "configs", f"{name}.py"), **overrides)


def timed(fn, min_seconds=2.0, warmup=2):
    """Seconds per call of fn, over at least min_seconds and 3 calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize() if GPU else None
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < min_seconds:
        fn()
        torch.cuda.synchronize() if GPU else None
        n += 1
    return (time.perf_counter() - start) / n


def peak_memory_mb():
    if GPU:
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/status") as f:  # this process's own peak resident memory
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def autocast():
    return torch.autocast(DEVICE.type, dtype=DTYPE, enabled=DTYPE != torch.float32)


def bench_encoder(args):
    try:
        from timm.models.vision_transformer import VisionTransformer
    except Exception as err:  # noqa: BLE001 -- timm or its torchvision missing or broken
        return {"skipped": f"timm not importable ({type(err).__name__})"}
    cfg, res, batch = size("b" if GPU else "s"), args.image_size or 224, 128 if GPU else 8
    ours = RVM(cfg).to(DEVICE)
    timm = VisionTransformer(img_size=res, patch_size=16, embed_dim=cfg.width, depth=cfg.enc_layers,
                             num_heads=cfg.enc_heads, num_classes=0, global_pool="").to(DEVICE)
    x = torch.rand(batch, 3, res, res, device=DEVICE)
    out = {"model": f"width {cfg.width}, depth {cfg.enc_layers}", "resolution": res, "batch": batch}
    for name, net, module in [("ours", ours.encode, ours), ("timm", timm.forward_features, timm)]:
        def fwd(net=net):
            with torch.no_grad(), autocast():
                net(x)

        def fwd_bwd(net=net, module=module):
            with autocast():
                net(x).float().square().mean().backward()
            module.zero_grad(set_to_none=True)
        out[name] = {"fwd_img_s": batch / timed(fwd), "fwd_bwd_img_s": batch / timed(fwd_bwd)}
    out["ratio"] = {k: out["ours"][k] / out["timm"][k] for k in out["ours"]}
    return out


def bf16_weights(model):
    """FSDP2 on a world of one: weights kept in float32 and cast to bf16 once per step, block by block, for
    the compute; no autocast, so none of its per-op casts (44 ms of a 292 ms RVM-B step, docs/bench.md)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if not dist.is_initialized():
        dist.init_process_group("nccl" if GPU else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in [*model.blocks(), model]:
        fully_shard(block, mp_policy=policy)
    return model


def bench_train(args):
    name, res, batch = ("b", 256, 64) if GPU else ("s", 128, 2)
    res, batch = args.image_size or res, args.batch or batch
    source, target = torch.rand(batch, 4, 3, res, res, device=DEVICE), torch.rand(batch, 4, 3, res, res, device=DEVICE)
    deltas = torch.randint(7, 52, (batch, 4))
    peak = peak_flops(DEVICE, DTYPE)
    depths = dict(enc_layers=2, core_layers=1, dec_layers=2) if args.quick else {}  # --compile's time is per block
    out = {"config": f"configs/{name}.py" + " at depths 2/1/2 (--quick)" * args.quick, "resolution": res,
           "batch": batch, "peak_tflops": peak / 1e12}
    modes = ["eager"] + ["compiled"] * args.compile + ["bf16_weights"] * args.bf16_weights
    for mode in modes:  # each from a fresh model and optimizer (fused AdamW on a GPU)
        model = RVM(size(name, **depths)).to(DEVICE)
        model.positions(*[res // model.config.patch_size] * 2, DEVICE)  # before compiling: RVM.positions
        net = torch.compile(model) if mode == "compiled" else bf16_weights(model) if mode == "bf16_weights" else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=GPU)

        def step(net=net, opt=opt, cast=mode != "bf16_weights"):
            with autocast() if cast else contextlib.nullcontext():
                loss = net(source, target, deltas)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats() if GPU else None
        seconds = timed(step, 1.0 if args.quick else 5.0, warmup=1 if mode == "eager" else 3)
        flops = model.flops_per_example(res) * batch / seconds
        out[mode] = {"step_s": seconds, "examples_s": batch / seconds, "tflops": flops / 1e12,
                     "mfu": flops / peak, "peak_mb": peak_memory_mb()}
    return out


def stream_case(aggregator, n_frames, res):
    """In a child process: stream n_frames frames through RVM-S; print time per frame and peak memory."""
    torch.manual_seed(0)
    model = RVM(size("s", aggregator=aggregator)).to(DEVICE).eval()
    frame = lambda: torch.rand(1, 3, res, res, device=DEVICE)  # noqa: E731 -- a live stream
    with torch.no_grad(), autocast():
        model.features(frame()[:, None])  # warm-up
        torch.cuda.reset_peak_memory_stats() if GPU else None
        start = time.perf_counter()
        if aggregator == "rnn":  # each frame's features are used and dropped, as in a stream
            state = None
            for _ in range(n_frames):
                _, state = model.step(frame(), state)
        else:  # the baseline needs every frame's tokens at once
            model.features(torch.stack([frame() for _ in range(n_frames)], dim=1))
        torch.cuda.synchronize() if GPU else None
        seconds = time.perf_counter() - start
    print(json.dumps({"per_frame_ms": 1000 * seconds / n_frames, "peak_mb": peak_memory_mb()}))


def labelprop_case(n_frames):
    from eval_labelprop import PROPAGATION, label_propagation
    prop = PROPAGATION["davis"]  # the paper's settings (Table 8)
    feats = torch.nn.functional.normalize(torch.randn(n_frames, 30, 55, 384, device=DEVICE), dim=-1)
    labels = torch.rand(30, 55, 3, device=DEVICE)
    label_propagation(feats[:2], labels, **prop)  # warm-up
    torch.cuda.reset_peak_memory_stats() if GPU else None
    start = time.perf_counter()
    label_propagation(feats, labels, **prop)
    torch.cuda.synchronize() if GPU else None
    print(json.dumps({"s_per_frame": (time.perf_counter() - start) / (n_frames - 1), "peak_mb": peak_memory_mb()}))


def child(*argv):
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr.strip()[-300:]}


def bench_stream(args):
    res, lengths = args.image_size or (256 if GPU else 64), [16, 64] if args.quick else [16, 64, 256, 512]
    rows = {agg: {n: child("--child=stream", agg, str(n), str(res)) for n in lengths} for agg in ("rnn", "attn")}
    return {"config": "configs/s.py", "resolution": res, **rows}


def bench_labelprop(args):
    return {"grid": "30x55, 384 channels", **child("--child=labelprop", "8" if args.quick else "30")}


def bench_data(args):
    import imageio.v3 as iio

    from data import ClipDataset, augment, make_loader, read_frames, sample_clip
    folder = args.videos or tempfile.mkdtemp(prefix="rvm_bench_")
    if not args.videos:  # four H.264 clips of moving noise blocks (DAVIS-like sizes, no download)
        for i in range(4):
            blocks = np.random.default_rng(i).integers(0, 256, (96, 30, 54, 3), dtype=np.uint8)
            frames = np.stack([np.roll(blocks[0], t, axis=1) for t in range(96)]).repeat(16, 1).repeat(16, 2)
            iio.imwrite(os.path.join(folder, f"clip{i}.mp4"), frames, plugin="pyav", codec="libx264", fps=25)
    dataset, out = ClipDataset(folder, image_size=256), {"videos": folder}
    for workers in (0, 1, 2):
        it = iter(make_loader(dataset, 8, workers))
        next(it)  # start-up: forking the workers, first decodes
        start, n = time.perf_counter(), 4 if args.quick else 16
        for _ in range(n):
            next(it)
        out[f"examples_s_{workers}_workers"] = 8 * n / (time.perf_counter() - start)
    rng, needed, window = np.random.default_rng(0), 0.0, 0.0
    for _ in range(20):
        path, n = dataset.sources[0]["videos"][rng.integers(len(dataset.sources[0]["videos"]))]
        idx, _ = sample_clip(rng, n)
        needed += timed(lambda p=path, i=idx: read_frames(p, i), 0.0, 0)
        window += timed(lambda p=path, i=idx, n=n: read_frames(p, np.arange(i[0], i[0] + min(64, n))), 0.0, 0)
    out.update(needed_frames_ms=50 * needed, whole_window_ms=50 * window, speedup=window / needed)
    jpegs = tempfile.mkdtemp(prefix="rvm_bench_jpegs_")  # a DAVIS-sized frame folder of moving noise blocks
    blocks = np.random.default_rng(0).integers(0, 256, (30, 54, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    for t in range(8):
        iio.imwrite(os.path.join(jpegs, f"{t:05d}.jpg"), np.roll(blocks, 8 * t, axis=1)[:480, :854])

    def clip(size, min_side):  # 8 frames decoded, cropped and resized, as ClipDataset.example makes a clip
        return augment(torch.from_numpy(read_frames(jpegs, range(8), min_side)).permute(0, 3, 1, 2), rng, size)

    least = 0.1 if args.quick else 1.0
    for s in (64, 128, 256):
        out[f"jpeg_clip_ms_{s}px"] = {"whole_frames": 1e3 * timed(lambda s=s: clip(s, 0), least, 1),
                                      "scaled_by_decoder": 1e3 * timed(lambda s=s: clip(s, 2 * s), least, 1)}
    return out


SECTIONS = {"encoder": bench_encoder, "train": bench_train, "stream": bench_stream, "labelprop": bench_labelprop,
            "data": bench_data}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats, a shallower training step")
    p.add_argument("--image_size", type=int, help="every section's resolution")
    p.add_argument("--batch", type=int, help="the training step's batch")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd training step")
    p.add_argument("--bf16_weights", action="store_true", help="also time FSDP2's bf16 weights instead of autocast")
    p.add_argument("--videos", help="a folder of videos for the data section (default: written here)")
    p.add_argument("--json", default="bench.json", help="where the results go")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.child == "stream":
        return stream_case(rest[0], int(rest[1]), int(rest[2]))
    if args.child == "labelprop":
        return labelprop_case(int(rest[0]))
    if rest or set(args.only.split(",")) - set(SECTIONS):
        sys.exit(f"bench.py: unknown arguments {rest} or --only={args.only} (sections: {', '.join(SECTIONS)})")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
    machine = torch.cuda.get_device_name() if GPU else f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} thr."
    results = {"machine": machine, "torch": torch.__version__}
    print(f"# rvm bench on {machine}, torch {torch.__version__}")
    for name in args.only.split(","):
        start = time.perf_counter()
        results[name] = SECTIONS[name](args)
        print(f"\n## {name} ({time.perf_counter() - start:.0f} s)\n" + json.dumps(results[name], indent=2, default=str))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
