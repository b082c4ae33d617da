"""Speed and memory of rvm, side by side with what a user would pick instead.

    python bench.py                      # every section, a table on stdout and bench.json
    python bench.py --only encoder,train # some sections
    python bench.py --quick              # smaller sizes, for a smoke run
    python bench.py --only train --compile  # also a torch.compile'd training step

Every figure is a ratio or a rate measured in this one run on this one machine, so the table
can be rerun anywhere; the README records one run with the machine it ran on. Sections:
  1. encoder   -- our per-frame encoder (tokenizer + ViT) against timm's VisionTransformer of the
                  same width, depth, heads and resolution: images/s, forward and forward+backward
                  (float32 on CPU, bf16 on GPU). timm is a benchmark-only dependency.
  2. train     -- one training step of configs/s.py (configs/b.py on GPU): achieved FLOP/s from
                  model.flops_per_example over the machine's dense matmul FLOP/s measured here (CPU),
                  or over the datasheet peak (GPU: MFU).
  3. stream    -- per-frame time and peak memory of feature extraction at 16/64/256/512 frames,
                  for the rnn core (one frame at a time, constant state) and the attn baseline (one
                  ViT over all frames' tokens, §9). Each case runs in its own process so that its
                  peak memory is its own.
  4. labelprop -- seconds per frame of label propagation on a DAVIS-sized (480x880) video at the
                  paper's settings, and the memory it needs.
  5. data      -- loader examples/s with 0/1/2 workers on a folder of mp4 files, and how much
                  faster decoding only the needed frames is than decoding the whole window.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import fields

import torch

from model import RVM, RVMConfig

DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, no sparsity


def size_of(name):
    """The model fields that configs/{name}.py sets, read from the file itself, so that what is
    measured here is what train.py would build from it."""
    namespace = {}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", f"{name}.py")
    exec(open(path).read(), namespace)
    return {f.name: namespace[f.name] for f in fields(RVMConfig) if f.name in namespace}


def device_and_dtype():
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, min_seconds=2.0, warmup=2):
    """Median-free but honest: run fn until min_seconds have passed, return seconds per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed > min_seconds and n >= 3:
            return elapsed / n


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # VmHWM is this process's own peak resident memory (ru_maxrss would include what the parent
    # had at the fork, since it survives exec).
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def machine():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# -- 1. encoder against timm ------------------------------------------------------------------------

def encoder_rates(net, module, x, device, dtype):
    """Images/s of net(x), forward only and forward+backward."""
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def fwd():
        with torch.no_grad(), autocast():
            net(x)

    def fwd_bwd():
        with autocast():
            out = net(x)
        out.float().square().mean().backward()
        module.zero_grad(set_to_none=True)

    return {"fwd_img_s": len(x) / timed(fwd, device), "fwd_bwd_img_s": len(x) / timed(fwd_bwd, device)}


def bench_encoder(args, device, dtype):
    try:
        from timm.models.vision_transformer import VisionTransformer
    except Exception as err:  # noqa: BLE001 -- timm or its torchvision may be missing or broken
        return {"skipped": f"timm not importable ({type(err).__name__}: {str(err)[:80]})"}
    size = size_of("s" if device.type == "cpu" else "b")
    res, batch = (args.image_size or 224), (8 if device.type == "cpu" else 128)
    cfg = RVMConfig(**size)
    ours = RVM(cfg).to(device)
    theirs = VisionTransformer(img_size=res, patch_size=16, embed_dim=cfg.width, depth=cfg.enc_layers,
                               num_heads=cfg.enc_heads, mlp_ratio=4, num_classes=0, global_pool="",
                               dynamic_img_size=False).to(device)
    x = torch.rand(batch, 3, res, res, device=device)
    rows = {"ours": encoder_rates(ours.encode, ours, x, device, dtype),
            "timm": encoder_rates(theirs.forward_features, theirs, x, device, dtype)}
    return {"model": f"width {cfg.width}, depth {cfg.enc_layers}, heads {cfg.enc_heads}", "resolution": res,
            "batch": batch, "dtype": str(dtype), **rows,
            "ratio_fwd": rows["ours"]["fwd_img_s"] / rows["timm"]["fwd_img_s"],
            "ratio_fwd_bwd": rows["ours"]["fwd_bwd_img_s"] / rows["timm"]["fwd_bwd_img_s"]}


# -- 2. a training step: FLOP/s and MFU -------------------------------------------------------------

def matmul_flops(device, dtype, n=2048):
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, min_seconds=1.0)


def bench_train(args, device, dtype):
    name = "s" if device.type == "cpu" else "b"
    res = args.image_size or (128 if device.type == "cpu" else 256)
    batch = args.batch or (2 if device.type == "cpu" else 64)
    model = RVM(RVMConfig(**size_of(name))).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    source = torch.rand(batch, 4, 3, res, res, device=device)
    target = torch.rand(batch, 4, 3, res, res, device=device)
    deltas = torch.randint(7, 52, (batch, 4), device=device)
    out = {"config": f"configs/{name}.py", "resolution": res, "batch": batch, "dtype": str(dtype)}
    if device.type == "cpu":
        out["gemm_tflops"] = matmul_flops(device, torch.float32) / 1e12
    else:
        peak = next((v for k, v in DATASHEET_BF16.items() if k in torch.cuda.get_device_name()), None)
        out["datasheet_tflops"] = peak and peak / 1e12

    # eager, and with --compile also torch.compile'd (train.py's compile=True); the first compiled
    # steps (the compilation itself) are warm-up, not timed
    for mode, net in [("eager", model)] + ([("compiled", torch.compile(model))] if args.compile else []):
        def step(net=net):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = net(source, target, deltas)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = timed(step, device, min_seconds=5.0 if not args.quick else 1.0, warmup=1 if mode == "eager" else 3)
        achieved = model.flops_per_example(res) * batch / seconds
        row = {"step_s": seconds, "examples_s": batch / seconds, "achieved_tflops": achieved / 1e12}
        if device.type == "cpu":
            row["fraction_of_gemm"] = achieved / (out["gemm_tflops"] * 1e12)
        else:  # the memory a micro_batch of this size needs (the weights and AdamW state included)
            row.update(mfu=out["datasheet_tflops"] and achieved / (out["datasheet_tflops"] * 1e12),
                       peak_mb=peak_memory_mb(device))
        out[mode] = row
    return out


# -- 3. streaming: constant cost per frame for the rnn core -------------------------------------------

def stream_case(aggregator, n_frames, res, size):
    """Runs in a child process: extract features of an n_frames video, report time and peak memory."""
    device, dtype = device_and_dtype()
    torch.manual_seed(0)
    model = RVM(RVMConfig(**size_of(size), aggregator=aggregator)).to(device).eval()
    frame = lambda t: torch.rand(1, 3, res, res, device=device, generator=None)  # a live stream
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model.step(frame(0)) if aggregator == "rnn" else model.features(frame(0)[:, None])  # warm-up
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if aggregator == "rnn":
            state = None
            for t in range(n_frames):  # each frame's features are used and dropped, as in a stream
                _, state = model.step(frame(t), state)
        else:  # the baseline needs every frame's tokens at once
            model.features(torch.stack([frame(t) for t in range(n_frames)], dim=1))
        sync(device)
        seconds = time.perf_counter() - start
    print(json.dumps({"per_frame_ms": 1000 * seconds / n_frames, "peak_mb": peak_memory_mb(device)}))


def run_child(*argv):
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, timeout=1800)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_stream(args, device, dtype):
    res = args.image_size or (64 if device.type == "cpu" else 256)
    lengths = [16, 64] if args.quick else [16, 64, 256, 512]
    rows = {agg: {n: run_child("--child-stream", agg, str(n), str(res), "s") for n in lengths}
            for agg in ("rnn", "attn")}
    out = {"config": "configs/s.py", "resolution": res, "rows": rows}
    rnn = rows["rnn"]
    if all("per_frame_ms" in rnn[n] for n in lengths):
        out["rnn_time_ratio_last_vs_16"] = rnn[lengths[-1]]["per_frame_ms"] / rnn[16]["per_frame_ms"]
        out["rnn_memory_ratio_last_vs_16"] = rnn[lengths[-1]]["peak_mb"] / rnn[16]["peak_mb"]
    return out


# -- 4. label propagation --------------------------------------------------------------------------

def labelprop_case(n_frames, channels):
    from eval_labelprop import label_propagation
    device, _ = device_and_dtype()
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(n_frames, 30, 55, channels, device=device), dim=-1)
    labels = torch.rand(30, 55, 3, device=device)
    label_propagation(feats[:2], labels)  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    label_propagation(feats, labels, n_context=20, temperature=0.7, topk=7, radius=20)
    sync(device)
    seconds = time.perf_counter() - start
    print(json.dumps({"s_per_frame": seconds / (n_frames - 1), "peak_mb": peak_memory_mb(device)}))


def bench_labelprop(args, device, dtype):
    n = 8 if args.quick else 30
    return {"grid": "30x55 (480x880 / 16)", "channels": 384, "frames": n, "settings": "context 20, top-k 7, "
            "temperature 0.7, radius 20", **run_child("--child-labelprop", str(n), "384")}


# -- 5. data loading -------------------------------------------------------------------------------

def write_bench_videos(folder, n_videos=4, size=256):
    """H.264 mp4 files made from the real DAVIS frames in ../shared (no download), else from noise."""
    import imageio.v3 as iio
    import numpy as np
    davis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data", "davis2017-more",
                         "JPEGImages", "480p")
    names = sorted(os.listdir(davis))[:n_videos] if os.path.isdir(davis) else []
    for i in range(n_videos):
        if i < len(names):
            files = sorted(os.listdir(os.path.join(davis, names[i])))
            frames = np.stack([iio.imread(os.path.join(davis, names[i], f))[:size, :size] for f in files])
        else:
            frames = np.random.default_rng(i).integers(0, 256, (96, size, size, 3), dtype=np.uint8)
        iio.imwrite(os.path.join(folder, f"clip{i}.mp4"), frames, plugin="pyav", codec="libx264", fps=25)
    return folder


def bench_data(args, device, dtype):
    import data
    folder = args.videos or write_bench_videos(tempfile.mkdtemp(prefix="rvm_bench_videos_"))
    return {"videos": folder, **data.bench(folder, image_size=256, batch_size=8, n_batches=4 if args.quick else 16)}


SECTIONS = {"encoder": bench_encoder, "train": bench_train, "stream": bench_stream,
            "labelprop": bench_labelprop, "data": bench_data}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--image-size", type=int, default=None, help="override each section's resolution")
    parser.add_argument("--batch", type=int, default=None, help="training-step batch size")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd training step")
    parser.add_argument("--videos", default=None, help="folder of videos for the data section")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    parser.add_argument("--child-stream", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-labelprop", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_stream:
        agg, n, res, size = args.child_stream
        return stream_case(agg, int(n), int(res), size)
    if args.child_labelprop:
        return labelprop_case(int(args.child_labelprop[0]), int(args.child_labelprop[1]))

    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        sys.exit(f"--only: unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    device, dtype = device_and_dtype()
    results = {"machine": machine(), "torch": torch.__version__, "device": device.type}
    print(f"# rvm bench on {results['machine']} (torch {torch.__version__})")
    if device.type == "cpu":
        print("# no GPU here: the GPU rows (bf16 encoder, MFU of configs/b.py) were not run")
    for name in args.only.split(","):
        start = time.perf_counter()
        results[name] = SECTIONS[name](args, device, dtype)
        print(f"\n## {name}  ({time.perf_counter() - start:.0f} s)")
        print(json.dumps(results[name], indent=2, default=str))
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
