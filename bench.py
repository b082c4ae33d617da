"""Speed and memory of rvm, side by side with what a user would pick instead.

    python bench.py                                  # every section: bench.json and stdout
    python bench.py --only=train --compile --bf16_weights --batch=128   # training step variants
    python bench.py --only=loader                    # can the CPUs feed a GPU?
    python bench.py --quick                          # smaller sizes: a smoke run

Each figure is a rate or a ratio measured in this run, on this machine (docs/bench.md keeps runs):
  encoder   -- our per-frame encoder against timm's ViT of the same size (a bench-only extra):
               images/s, forward and forward+backward (float32 on CPU, bf16 on GPU).
  train     -- a training step of configs/s.py (b.py on a GPU): FLOP/s from flops_per_example
               over model.peak_flops (the matmul rate here, or the datasheet's).
  stream    -- per-frame time and peak memory of streaming 16..512 frames, the rnn core against
               the attn baseline (§9), each case in its own process: its peak memory its own.
  labelprop -- seconds per frame of label propagation on a DAVIS frame at the paper's settings.
  loader    -- clips (RVM-S's recipe) per second of one core on web-like mp4s, mp4s at short side
               256 with close keyframes, 480p JPEG folders and data.py's prepared form, R = 1 and
               4 (repeated sampling); the cores a GPU training RVM-S or -B needs.
"""

import argparse
import contextlib
import glob
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
DEVICE = torch.device("cuda" if GPU else "cpu")
DTYPE = torch.bfloat16 if GPU else torch.float32
# What a GPU asks for, measured (docs/bench.md): RVM-B, 256 px; other sizes at the same FLOP/s.
MEASURED = {"config": "b", "examples_s": 266, "gpu": "NVIDIA H200, torch.compile, bf16"}


def size(name, **overrides):
    return config_from_file(os.path.join(ROOT, "configs", f"{name}.py"), **overrides)


def sync():
    if GPU:
        torch.cuda.synchronize()


def reset_peak_memory():
    if GPU:
        torch.cuda.reset_peak_memory_stats()


def timed(fn, min_seconds=2.0, warmup=2):
    """Seconds per call of fn, over at least min_seconds and 3 calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < min_seconds:
        fn()
        sync()
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
    cfg = size("b" if GPU else "s")
    res = args.image_size or 224
    batch = 128 if GPU else 8
    ours = RVM(cfg).to(DEVICE)
    timm = VisionTransformer(img_size=res, patch_size=cfg.patch_size, embed_dim=cfg.width,
                             depth=cfg.enc_layers, num_heads=cfg.enc_heads, num_classes=0,
                             global_pool="").to(DEVICE)
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
    """FSDP2 on a world of one: float32 weights cast to bf16 once per step, block by block; no
    autocast, so none of its per-op casts (44 ms of a 292 ms RVM-B step, docs/bench.md)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if not dist.is_initialized():
        dist.init_process_group("nccl" if GPU else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in [*model.blocks(), model]:
        fully_shard(block, mp_policy=policy)
    return model


def bench_train(args):
    from data import sample_clips
    name = "b" if GPU else "s"
    res = args.image_size or (256 if GPU else 128)
    batch = args.batch or (64 if GPU else 2)
    source = torch.rand(batch, 4, 3, res, res, device=DEVICE)
    target = torch.rand(batch, 4, 3, res, res, device=DEVICE)
    rng = np.random.default_rng(0)  # time gaps as training draws them
    deltas = torch.from_numpy(np.stack([sample_clips(rng, 64)[0][1] for _ in range(batch)]))
    peak = peak_flops(DEVICE, DTYPE)
    depths = {}
    if args.quick:  # --compile's time is per block
        depths = dict(enc_layers=2, core_layers=1, dec_layers=2)
    out = {"config": f"configs/{name}.py" + " at depths 2/1/2 (--quick)" * args.quick,
           "resolution": res, "batch": batch, "peak_tflops": peak / 1e12}
    modes = ["eager"] + ["compiled"] * args.compile + ["bf16_weights"] * args.bf16_weights
    for mode in modes:  # each from a fresh model and optimizer (fused AdamW on a GPU)
        model = RVM(size(name, **depths)).to(DEVICE)
        model.positions(*[res // model.config.patch_size] * 2, DEVICE)  # before compiling
        net = model
        if mode == "compiled":
            net = torch.compile(model)
        if mode == "bf16_weights":
            net = bf16_weights(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=GPU)

        def step(net=net, opt=opt, cast=mode != "bf16_weights"):
            with autocast() if cast else contextlib.nullcontext():
                loss = net(source, target, deltas)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        reset_peak_memory()
        seconds = timed(step, 1.0 if args.quick else 5.0, warmup=1 if mode == "eager" else 3)
        flops = model.flops_per_example(res) * batch / seconds
        out[mode] = {"step_s": seconds, "examples_s": batch / seconds, "tflops": flops / 1e12,
                     "mfu": flops / peak, "peak_mb": peak_memory_mb()}
    return out


def stream_case(aggregator, n_frames, res):
    """In a child process: n_frames frames streamed through RVM-S; time per frame, peak memory."""
    torch.manual_seed(0)
    model = RVM(size("s", aggregator=aggregator)).to(DEVICE).eval()

    def frame():  # a live stream
        return torch.rand(1, 3, res, res, device=DEVICE)
    with torch.no_grad(), autocast():
        model.features(frame()[:, None])  # warm-up
        reset_peak_memory()
        start = time.perf_counter()
        if aggregator == "rnn":  # each frame's features are used and dropped, as in a stream
            state = None
            for _ in range(n_frames):
                _, state = model.step(frame(), state)
        else:  # the baseline needs every frame's tokens at once
            model.features(torch.stack([frame() for _ in range(n_frames)], dim=1))
        sync()
        seconds = time.perf_counter() - start
    print(json.dumps({"per_frame_ms": 1000 * seconds / n_frames, "peak_mb": peak_memory_mb()}))


def labelprop_case(n_frames):
    from eval_labelprop import PROPAGATION, RESOLUTION, label_propagation
    cfg = size("s")
    grid = [n // cfg.patch_size for n in RESOLUTION["davis"]]  # a DAVIS frame, as the paper's
    feats = torch.randn(n_frames, *grid, cfg.width, device=DEVICE)
    feats = torch.nn.functional.normalize(feats, dim=-1)
    labels = torch.rand(*grid, 3, device=DEVICE)
    prop = PROPAGATION["davis"]  # the paper's settings (Table 8)
    label_propagation(feats[:2], labels, **prop)  # warm-up
    reset_peak_memory()
    start = time.perf_counter()
    label_propagation(feats, labels, **prop)
    sync()
    seconds = (time.perf_counter() - start) / (n_frames - 1)
    print(json.dumps({"grid": grid, "s_per_frame": seconds, "peak_mb": peak_memory_mb()}))


def child(*argv):
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                         timeout=1800)
    if out.returncode:
        return {"error": out.stderr.strip()[-300:]}
    return json.loads(out.stdout.splitlines()[-1])


def bench_stream(args):
    res = args.image_size or (256 if GPU else 64)
    lengths = [16, 64] if args.quick else [16, 64, 256, 512]
    rows = {}
    for agg in ("rnn", "attn"):
        rows[agg] = {n: child("--child=stream", agg, str(n), str(res)) for n in lengths}
    return {"config": "configs/s.py", "resolution": res, **rows}


def bench_labelprop(args):
    return child("--child=labelprop", "8" if args.quick else "30")


def write_h264(path, frames, gop=None):
    """frames uint8 [T, H, W, 3] -> H.264 at 30 fps; x264's defaults: B-frames, gop 250."""
    import av
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def loader_corpora(root, quick):
    """The same 10-s, 30 fps videos as 'web' mp4s (854x480, x264's defaults), 'short256' (a
    keyframe every 16 frames), 'jpeg480' frame folders and 'prepared' (`data.py --src=web`). From
    DAVIS-2017 sequences in $RVM_DATA, played forwards and back, else from moving noise blocks."""
    import imageio.v3 as iio
    from PIL import Image

    import data
    pattern = os.path.join(os.environ.get("RVM_DATA", "-"), "davis2017-*/JPEGImages/480p/*")
    davis = sorted(glob.glob(pattern))
    n_videos = 2 if quick else max(4, len(davis))
    n_frames = 64 if quick else 300
    for v in range(n_videos):
        if davis:
            sequence = data.read_frames(davis[v % len(davis)])
            order = list(range(len(sequence))) + list(range(len(sequence) - 2, 0, -1))
            frames = sequence[[order[t % len(order)] for t in range(n_frames)]]
        else:
            rng = np.random.default_rng(v)
            blocks = rng.integers(0, 256, (30, 54, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
            frames = np.stack([np.roll(blocks, 4 * t, axis=1)[:480, :854] for t in range(n_frames)])
        for name in ("web", "short256", "jpeg480"):
            os.makedirs(os.path.join(root, name), exist_ok=True)
        write_h264(os.path.join(root, "web", f"{v}.mp4"), frames)
        small = [Image.fromarray(f).resize((454, 256), Image.Resampling.BICUBIC) for f in frames]
        write_h264(os.path.join(root, "short256", f"{v}.mp4"), np.stack(small), gop=16)
        os.makedirs(os.path.join(root, "jpeg480", str(v)))
        for t, frame in enumerate(frames):
            iio.imwrite(os.path.join(root, "jpeg480", str(v), f"{t:05d}.jpg"), frame)
    with contextlib.redirect_stdout(sys.stderr):
        data.prepare(os.path.join(root, "web"), os.path.join(root, "prepared"))
    return n_videos * n_frames / 30 / 3600  # hours of video in each folder


def clips_per_core_second(folder, repeats, n_clips):
    """Clips one thread makes per second of its CPU time, RVM-S's recipe (256 px, 64-frame window,
    4 + 4 frames, flip and crop): what one loader worker makes on an idle core."""
    from data import ClipDataset
    dataset = ClipDataset(folder, image_size=256, repeated_sampling=repeats)
    dataset.example(10 ** 6)  # warm-up
    start = time.process_time()
    for k in range(n_clips):
        dataset.example(k)
    return n_clips / (time.process_time() - start)


def bench_loader(args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker's
    root = tempfile.mkdtemp(prefix="rvm_bench_loader_")
    hours = loader_corpora(root, args.quick)
    rates, out = {}, {"folder": root}
    for name in ("web", "short256", "jpeg480", "prepared"):
        folder = os.path.join(root, name)
        files = glob.glob(os.path.join(folder, "**", "*.*"), recursive=True)
        out[name] = {"disk_gb_per_hour": sum(map(os.path.getsize, files)) / 1e9 / hours}
        for repeats in (1, 4):
            rate = clips_per_core_second(folder, repeats, 8 if args.quick else 200)
            out[name][f"clips_s_per_core_R{repeats}"] = rate
            rates[f"{name}_R{repeats}"] = rate
    torch.set_num_threads(threads)
    with torch.device("meta"):
        achieved = MEASURED["examples_s"] * RVM(size(MEASURED["config"])).flops_per_example(256)
        for name in ("s", "b"):
            demand = achieved / RVM(size(name)).flops_per_example(256)
            cores = {corpus: demand / rate for corpus, rate in rates.items()}
            out[f"configs/{name}.py"] = {"clips_s_per_gpu": demand, "cores_per_gpu": cores}
    out["gpu"] = MEASURED["gpu"]
    return out


SECTIONS = {"encoder": bench_encoder, "train": bench_train, "stream": bench_stream,
            "labelprop": bench_labelprop, "loader": bench_loader}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    p.add_argument("--image_size", type=int, help="the encoder, train and stream resolution")
    p.add_argument("--batch", type=int, help="the training step's batch")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd step")
    p.add_argument("--bf16_weights", action="store_true",
                   help="also time FSDP2's bf16 weights instead of autocast")
    p.add_argument("--json", default="bench.json", help="where the results go")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.child == "stream":
        return stream_case(rest[0], int(rest[1]), int(rest[2]))
    if args.child == "labelprop":
        return labelprop_case(int(rest[0]))
    if rest or set(args.only.split(",")) - set(SECTIONS):
        sys.exit(f"bench.py: unknown arguments {rest} or --only={args.only} "
                 f"(sections: {', '.join(SECTIONS)})")
    cpu = platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    machine = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    if GPU:
        machine = torch.cuda.get_device_name()
    results = {"machine": machine, "torch": torch.__version__}
    print(f"# rvm bench on {machine}, torch {torch.__version__}")
    for name in args.only.split(","):
        start = time.perf_counter()
        results[name] = SECTIONS[name](args)
        seconds = time.perf_counter() - start
        print(f"\n## {name} ({seconds:.0f} s)\n" + json.dumps(results[name], indent=2, default=str))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
