"""Train RVM with the paper's recipe (§4.1): one process, or many under torchrun.

    python train.py                                                  # the white-noise square demo on a CPU
    python train.py configs/s.py --data=data/videos                  # RVM-S on one GPU (or CPU)
    python train.py configs/s.py --data=data/videos --init_from=resume    # continue it exactly
    torchrun --standalone --nproc_per_node=8 train.py configs/b.py --data=data/videos   # one node, 8 GPUs
    torchrun --nnodes=4 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --rdzv_id=rvm train.py configs/l.py --data=data/videos       # many nodes, out_dir on a shared disk

data/videos: your videos (mp4, webm, avi, mkv, mov, gif) or folders of frames, e.g. DAVIS-2017's
JPEGImages/480p (https://davischallenge.org). Settings are the names below: their defaults, then
each config file (plain Python), then --name=value (a Python literal, or a bare word for text), in
that order; every field of model.RVMConfig is one; `python train.py --help` lists them all.

Writes into out_dir: ckpt.pt (every ckpt_interval steps and at the end), log.jsonl (a line per log_interval
steps, and evaluations), loss.png and reconstruction.png (every eval_interval steps and at the end).

The global batch is split as batch_size = world size x grad accumulation x micro_batch, and the
data as batch_size / micro_batch "slots": independent example streams, slot i being
data.ClipDataset(stream=i). Process r feeds slots r*A .. r*A+A-1 to its A micro-batches, and the
masks of a micro-batch are drawn from (seed, step, slot). So what a step trains on does not depend
on the number of processes: a run can resume on another number of GPUs and continue the same data.
"""

import builtins
import contextlib
import copy
import difflib
import fcntl
import functools
import importlib.util
import inspect
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import types
from ast import literal_eval
from dataclasses import asdict, fields

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from model import RVM, RVMConfig, load_model, peak_flops

# -----------------------------------------------------------------------------------------------
# Settings. The defaults are RVM-S with the paper's recipe (§4.1); configs/*.py change them.
# -- output
out_dir = "out"  # checkpoint, log and pictures go here
init_from = "scratch"  # 'scratch', 'resume' (out_dir/ckpt.pt), 'auto' (resume if there is one), or weights (.pt, .npz)
log_interval = 10  # steps between lines in out_dir/log.jsonl
eval_interval = 1000  # steps between evaluations (below) and out_dir/loss.png and reconstruction.png
ckpt_interval = 1000  # steps between checkpoints (one is always written at the end); 0: only at the end
ckpt_minutes = 0.0  # also a checkpoint once this many minutes have passed since the last one; 0: by steps only
save_signals = "SIGTERM,SIGUSR1"  # on these every process ends its step, all save, and the run exits with 99
# -- data (supplement §7): 64-frame windows, 4 source frames, 4 targets 4..48 frames after them
data = "data/videos"  # a folder of videos or frame folders, 'noise_square[:options]', or [(spec, weight), ...]
image_size = 256  # frames are cropped and resized to image_size x image_size (§4.1)
n_source = 4  # source frames per clip, unrolled through the core
n_target = 4  # target frames per clip, reconstructed
gap_min = 4  # each target lies gap_min..gap_max frames after the last source frame
gap_max = 48  # (the paper: 4..48)
window = 64  # frames per training clip
per_frame_crop = False  # a crop box per frame instead of one per clip (the paper's "frame-level")
num_workers = 8  # loader processes per rank
# -- evaluation, every eval_interval steps and at step 0, in log.jsonl and loss.png: is it learning?
val_data = ""  # held-out videos (a spec as data): their loss, and copying the last source frame's; '' for none
val_clips = 64  # held-out clips, fixed (frames, crops, gaps, masks) for every step, run and world size
labelprop_data = ""  # a DAVIS folder: J&F of core and encoder features (costs two eval_labelprop.py runs); '' none
labelprop_resolution = (480, 880)  # its frames resized to (H, W): the paper's; a small model wants less
labelprop_sequences = ""  # comma-separated sequences; '' for all of ImageSets/2017/val.txt
# -- optimisation (§4.1; the paper publishes no learning rate: MAE's linear scaling rule)
batch_size = 2048  # global batch: clips per optimizer step, over all processes
micro_batch = 64  # clips per forward/backward on one device; lower it when out of memory
max_steps = 1_000_000  # the paper: 1M steps of 2048 clips, ~2B examples
base_lr = 1.5e-4  # peak learning rate = base_lr * batch_size / 256
learning_rate = 0.0  # > 0: this peak learning rate instead of the scaling rule
min_lr = 0.0  # the cosine decays to this
warmup_steps = 10_000  # linear warm-up (§4.1 names one; its length is ours: 1 % of the run)
lr_decay_steps = 0  # the cosine reaches min_lr at this step; 0: at max_steps
weight_decay = 0.05  # AdamW's, on weight matrices only (none on biases, norms, CLS and MASK tokens)
beta1 = 0.9  # AdamW's betas (the MAE/SiamMAE recipe)
beta2 = 0.95  # (see beta1)
grad_clip = 1.0  # clip the global gradient norm to this; 0: no clipping
# -- system
device = "auto"  # 'auto' (cuda if there is one, else cpu), 'cuda', 'cpu', or 'xla' (torch_xla)
dtype = "bfloat16"  # 'bfloat16': autocast forward and backward on float32 weights (§4.1), or 'float32'
sharding = "fsdp"  # over several processes: 'fsdp' (FSDP2 per block, §4.1), 'ddp', or 'none'
compile = False  # torch.compile the model
peak_flops_per_device = 0.0  # the FLOP/s that MFU is counted against; 0: model.peak_flops's figure
threads = 0  # torch CPU threads per process; 0: torch's default. Tiny models run fastest on 1
seed = 0  # seeds the data, the masks and the initial weights
allow_changes = ""  # settings a resume may change from the checkpoint's, e.g. 'learning_rate,max_steps'
# -- model: every field of model.RVMConfig, same name, same default (RVM-S, Table 5)
globals().update({f.name: f.default for f in fields(RVMConfig)})
# -----------------------------------------------------------------------------------------------
CHOICES = dict(device=("auto", "cuda", "cpu", "xla"), dtype=("bfloat16", "float32"), sharding=("fsdp", "ddp", "none"))
settings = {k: v for k, v in globals().items() if not k.startswith("_") and k not in ("CHOICES", "settings")
            and isinstance(v, (bool, int, float, str, list, tuple))}
# torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without it this is the only process.
rank, world_size, local_rank = (int(os.environ.get(k, d)) for k, d in [("RANK", 0), ("WORLD_SIZE", 1),
                                                                          ("LOCAL_RANK", 0)])
distributed, master = world_size > 1, rank == 0  # rank 0 logs, plots and writes checkpoints
ckpt_path, log_path = (os.path.join(out_dir, name) for name in ("ckpt.pt", "log.jsonl"))  # configure() moves them


def main():
    """The run: the set-up in five steps, then the loop. Below main(): the pieces it calls, in order, then the
    machinery that keeps a run safe (one-line failures, the out_dir lock, resume checks, signals)."""
    # 1. Settings: defaults, config files, --key=value, each checked, then checked against each other.
    model_config, peak_lr, tokens = read_settings(sys.argv[1:])
    grad_accum, n_slots = batch_size // (micro_batch * world_size), batch_size // micro_batch
    spmd = device == "xla" and sharding == "fsdp"  # XLA's sharding: the compiler splits one program over the devices
    fsdp, ddp = sharding == "fsdp" and distributed and not spmd, sharding == "ddp" and distributed

    # 2. Processes: one device each (cuda:LOCAL_RANK, or the CPU with gloo); out_dir, this run's alone; the checkpoint.
    dev, flags = start_processes(spmd)
    init, ckpt, changed = claim_out_dir()  # init: 'scratch', 'resume' or a weights file
    start_step = ckpt["step"] if ckpt else 0

    # 3. Data: this rank's slots, each its own stream (see the top of this file), from where the checkpoint left it.
    # Made before the model is seeded (iter(DataLoader) draws a seed): every world size builds the same initial model.
    slots = range(rank * grad_accum, (rank + 1) * grad_accum)
    examples_per_slot = start_step * micro_batch  # (an allowed change of batch split: the examples, re-split)
    if ckpt is not None and (ckpt["data"]["micro_batch"], ckpt["data"]["slots"]) != (micro_batch, n_slots):
        examples_per_slot = ckpt["data"]["examples"] // n_slots
    clips = dict(image_size=image_size, n_source=n_source, n_target=n_target, gap_min=gap_min, gap_max=gap_max,
                 window=window, per_frame_crop=per_frame_crop)
    loaders, held_out, labelprop_videos = load_data(clips, slots, examples_per_slot, tokens)

    # 4. The model, sharded, and its optimizer. Nothing after this draws from the global generators.
    torch.manual_seed(seed)
    raw_model = build_model(init, model_config).to(dev)  # the module the optimizer holds and the checkpoints name
    model, xla_mesh = shard(raw_model, dev, spmd, fsdp, ddp)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    # AdamW (§4.1) with decoupled weight decay on the weight matrices (linear and conv kernels) only.
    decay = [p for n, p in raw_model.named_parameters() if p.ndim >= 2 and n not in ("cls_token", "mask_token")]
    no_decay = [p for p in raw_model.parameters() if all(p is not q for q in decay)]  # biases, norms, CLS, MASK
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=0.0, betas=(beta1, beta2))
    if ckpt is not None:  # the file holds full state dicts; set_state_dict shards them again
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        set_state_dict(raw_model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        for t in [t for state in optimizer.state.values() for t in state.values() if t.ndim] if spmd else []:
            shard_like_weight(t, xla_mesh)  # loaded optimizer state arrives whole: split it as its weight is
        del ckpt  # the mmap'd file is no longer needed
    flops_per_example = raw_model.flops_per_example(image_size, n_source, n_target)
    peak = peak_flops_per_device or (peak_flops(dev, torch.bfloat16 if dtype == "bfloat16" else torch.float32)
                                     if master else None)  # the FLOP/s that MFU is counted against

    # 5. Logs: a progress bar and out_dir/log.jsonl on rank 0. Resuming drops the lines after the checkpoint.
    if master:
        rows = [r for r in log_rows() if r["step"] <= start_step] if init == "resume" else []
        rows += [{"step": start_step, "resumed_with_changes": changed}] if changed else []  # what the user allowed
        with open(log_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"RVM {raw_model.num_params('all') / 1e6:.1f}M parameters, {flops_per_example / 1e9:.2f} GFLOPs per "
              f"example | device {dev}, {dtype}, sharding {sharding if distributed or spmd else 'none'}, {world_size} "
              f"process(es) | global batch {batch_size} = {world_size} x {grad_accum} micro-batches x {micro_batch} | "
              f"peak lr {peak_lr:.3g} | steps {start_step}..{max_steps}", flush=True)
    if device == "xla":
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.debug.metrics as xla_metrics

    # -------------------------------------------------------------------------------------------
    # The loop: one optimizer step per global batch. Losses and gradient norms stay on the device and
    # are read on the host only at log steps and before checkpoints: a read inside the step would stall
    # the device (and on XLA, run the step's graph twice).
    progress = tqdm(total=max_steps, initial=start_step, disable=not master, dynamic_ncols=True, unit="step")
    step, t_log, step_log = start_step, time.perf_counter(), start_step
    loss_total, grad_norm_max = torch.zeros((), device=dev), torch.zeros((), device=dev)
    skipped_videos, xla_counts = 0, [0, 0]  # bad videos data.py passed over on this rank; XLA graphs run, compiled
    t_saved, stopping, evaluations = time.monotonic(), False, val_data or labelprop_data
    if evaluations and start_step == 0:  # the references: the model before training (log.jsonl keeps them)
        evaluate(0, raw_model, dev, fsdp, autocast, held_out, labelprop_videos)
    while step < max_steps:
        lr = learning_rate_at(step, peak_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        plotting = master and ((step + 1) % eval_interval == 0 or step + 1 == max_steps)
        for m in range(grad_accum):
            source, target, deltas, skipped = next_batch(loaders[m], slots[m], dev, xla_mesh)
            skipped_videos += skipped
            # DDP all-reduces the gradients with the last micro-batch only; FSDP2 reduce-scatters after each,
            # which keeps only a shard of the gradients in memory.
            with model.no_sync() if ddp and m < grad_accum - 1 else contextlib.nullcontext():
                with autocast:
                    loss, reconstruction, mask = model(source, target, deltas,
                                                       mask_perm=mask_permutation(step, slots[m], tokens, dev))
                (loss / grad_accum).backward()
            loss_total += loss.detach() / grad_accum
            if plotting and m == 0:  # kept on the device: copied out after the step, not in the middle of it
                example = [x[0].detach() for x in (source, target, reconstruction.float(), mask, deltas)]
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip if grad_clip > 0 else math.inf)
        grad_norm_max = torch.maximum(grad_norm_max, grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor")
                                      else grad_norm)  # a DTensor under FSDP2
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "xla":
            torch_xla.sync()  # the step's graph runs here
        step += 1
        progress.update(1)

        signum, launcher_gone, due = agree(flags, stop["signal"], stop["launcher_gone"],
                                           ckpt_minutes > 0 and time.monotonic() - t_saved >= 60 * ckpt_minutes)
        stopping = (signum or launcher_gone) and step < max_steps
        saving = (ckpt_interval and step % ckpt_interval == 0) or step == max_steps or due or stopping
        if step % log_interval == 0 or saving:
            if distributed:  # every rank sees the same mean loss: on a NaN they all stop together
                dist.all_reduce(loss_total)
            loss_value = loss_total.item() / world_size / (step - step_log)
            norm_value = grad_norm_max.item()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):  # stop before saving it
                steps = f"step {step}" if step == step_log + 1 else f"steps {step_log + 1}..{step}"
                fail(f"{steps}: loss {loss_value}, gradient norm {norm_value}: not finite: lower the learning rate "
                     f"or check the data. {kept()}")
            elapsed, t_log = time.perf_counter() - t_log, time.perf_counter()
            examples_per_s = (step - step_log) * batch_size / elapsed
            mfu = flops_per_example * examples_per_s / world_size / peak if peak else None
            if master:
                row = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": norm_value,
                       "examples": step * batch_size, "examples_per_s": examples_per_s, "mfu": mfu,
                       "skipped_videos": skipped_videos}
                if device == "xla":  # graphs run per step and compilations since the last line: 1 and 0 when steady
                    xm.wait_device_ops()
                    counts = [sum((xla_metrics.metric_data(k) or [0])[0] for k in keys) for keys in
                              (("ExecuteTime", "ExecuteReplicatedTime"), ("CompileTime",))]
                    row.update(xla_graphs_per_step=(counts[0] - xla_counts[0]) / (step - step_log),
                               xla_compiles=counts[1] - xla_counts[1])
                    xla_counts = counts
                write_log(row)
                progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", ex_s=f"{examples_per_s:.1f}",
                                     mfu="n/a" if mfu is None else f"{100 * mfu:.1f}%")
            loss_total.zero_(), grad_norm_max.zero_()
            step_log = step
        t_pause = time.perf_counter()
        if evaluations and not stopping and (step % eval_interval == 0 or step == max_steps):
            evaluate(step, raw_model, dev, fsdp, autocast, held_out, labelprop_videos)
        if plotting and not stopping:
            try:
                plot_loss(os.path.join(out_dir, "loss.png"))
                plot_reconstruction(os.path.join(out_dir, "reconstruction.png"), *[x.cpu() for x in example], step)
            except OSError as err:
                tqdm.write(f"train.py: warning: could not write the pictures in {out_dir}: {err}")
        if saving:
            stop_together(save_checkpoint(step, raw_model, optimizer, model_config))
            t_saved = time.monotonic()
        t_log += time.perf_counter() - t_pause  # examples/s and MFU count training time only
        if stopping:
            break

    # A clean end on every rank. Without the explicit exit a gloo rank sometimes aborts at interpreter
    # shutdown ("terminate called without an active exception") although training succeeded.
    progress.close()
    loaders.clear()  # stops the loader workers
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    if master and stopping:
        print(f"train.py: {signal.Signals(int(signum)).name if signum else 'the launcher ended'} at step {step}: "
              f"saved {ckpt_path}; the same command with init_from='auto' (or 'resume') continues. "
              f"Exit status {REQUEUE}.")
    elif master:
        print(f"done: {step} steps. {out_dir}/ holds ckpt.pt, log.jsonl, loss.png and reconstruction.png. Next:")
        print(f"  python visualize.py --demo --ckpt={ckpt_path}" if str(data).startswith("noise_square") else
              f"  python visualize.py --video=<a video or frame folder> --ckpt={ckpt_path}\n"
              f"  python eval_labelprop.py --task=davis --data=<DAVIS-2017 folder> --ckpt={ckpt_path}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(REQUEUE if stopping else 0)


# -----------------------------------------------------------------------------------------------
# The pieces main() calls, in the order it calls them.


def read_settings(argv):
    """Step 1, before any process group or model exists. Returns the model's config, peak learning rate, tokens."""
    if "--help" in argv or "-h" in argv:
        print_help()
        sys.exit(0)
    if not argv:  # no arguments: the built-in default is the laptop demo
        argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "noise_square.py")]
        print(f"train.py: no arguments, so the built-in default: the white-noise square demo ({argv[0]})")
    configure(argv)
    if micro_batch < 1 or batch_size % (micro_batch * world_size):
        fail(f"batch_size={batch_size} must be a positive multiple of micro_batch * world_size = "
             f"{micro_batch} * {world_size}")
    if min(max_steps, log_interval, eval_interval, val_clips) < 1 or min(warmup_steps, ckpt_interval) < 0:
        fail("max_steps, log_interval, eval_interval and val_clips must be >= 1; warmup_steps and ckpt_interval >= 0")
    try:
        model_config = RVMConfig(**{f.name: settings[f.name] for f in fields(RVMConfig)})
    except ValueError as err:
        fail(f"model settings: {err}")
    P = model_config.patch_size
    peak_lr = learning_rate or base_lr * batch_size / 256  # MAE's linear scaling rule
    tokens = (image_size // P) ** 2
    for wrong, why in [  # settings that cannot work together, named before any work
            (image_size % P, f"image_size={image_size} is not a multiple of patch_size={P}"),
            (labelprop_data and (len(labelprop_resolution) != 2 or any(x % P for x in labelprop_resolution)),
             f"labelprop_resolution={labelprop_resolution} must be (H, W), multiples of patch_size"),
            (window > model_config.n_deltas, f"window={window} > n_deltas={model_config.n_deltas}: the decoder one-hot "
             "encodes each target's offset Δ < n_deltas from the first source frame; a window allows up to window - 1"),
            (device == "cuda" and not torch.cuda.is_available(), "device='cuda' but torch sees no CUDA GPU (use "
             "--device=cpu, or install a CUDA build of torch)"),
            (device == "xla" and not importlib.util.find_spec("torch_xla"), "device='xla' needs torch_xla, which is "
             "not installed (README: 'On TPUs')"),
            (device == "xla" and sharding == "fsdp" and distributed, "sharding='fsdp' on XLA is SPMD: one process over "
             "all its devices; start it with python, not torchrun (or use --sharding=ddp, one process per device)"),
            (distributed and sharding == "none", f"sharding='none' with {world_size} processes would train "
             f"{world_size} unsynchronised copies; use fsdp or ddp"),
            (init_from not in ("scratch", "resume", "auto") and not os.path.isfile(init_from), f"init_from="
             f"{init_from!r}: no such file (expected 'scratch', 'resume', 'auto' or a .pt or .npz checkpoint)"),
            (None in stop_signals(), f"save_signals={save_signals!r}: not a list of signals' names, such as "
             "'SIGTERM,SIGUSR1'")]:
        if wrong:
            fail(why)
    for pointless, why in [(warmup_steps >= max_steps, f"warmup_steps={warmup_steps} >= max_steps={max_steps}: the "
                            "learning rate never reaches its peak"),
                           (peak_lr < 1e-6, f"the peak learning rate is {peak_lr:.2g} (base_lr * batch_size / 256 = "
                            f"{base_lr} * {batch_size} / 256): nothing will be learned; set learning_rate"),
                           (tokens > 4096, f"{tokens} tokens per frame (image_size / patch_size = "
                            f"{image_size // P} per side): attention costs grow with their square")]:
        if pointless and master:  # named before any work
            print(f"train.py: warning: {why}", file=sys.stderr)
    return model_config, peak_lr, tokens


def start_processes(spmd):
    """Step 2 (on XLA the process group before the device, as torch_xla asks). Returns the device and a gloo group
    for the flags the ranks agree on (None: not needed)."""
    for sig in stop_signals():
        signal.signal(sig, lambda signum, frame: stop.update(signal=signum))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun
        threading.Thread(target=watch_launcher, args=(os.getppid(),), daemon=True).start()
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        fail(f"out_dir={out_dir!r}: cannot create it ({err.strerror})")
    if threads:
        torch.set_num_threads(threads)
    device_type = device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    gpu, backend = device_type == "cuda", {"cuda": "nccl", "xla": "xla"}.get(device_type, "gloo")
    if gpu:
        torch.cuda.set_device(local_rank)
    if device_type == "xla":
        import torch_xla
        import torch_xla.distributed.xla_backend  # noqa: F401 -- registers the 'xla' process-group backend
        import torch_xla.runtime as xr
        if spmd:
            xr.use_spmd()  # before any XLA tensor exists
        if os.environ.get("PJRT_DEVICE", "CPU") != "CPU":  # the CPU runtime cannot read its cache back
            xr.initialize_cache(os.path.join(out_dir, "xla_cache"))  # a resume starts without recompiling
    if distributed:
        dist.init_process_group(backend, **({"init_method": "xla://"} if device_type == "xla" else {}))
        if dist.get_world_size() != world_size:
            fail(f"torchrun started {world_size} processes, but the {backend} process group holds "
                 f"{dist.get_world_size()}: they would train unsynchronised copies (torch_xla's CPU runtime runs each "
                 "process alone; there, use one process with --sharding=fsdp over its devices)")
    dev = torch_xla.device() if device_type == "xla" else torch.device(device_type, local_rank if gpu else None)
    return dev, dist.new_group(backend="gloo") if distributed and backend != "gloo" else None  # flags: no device sync


def load_data(clips, slots, start, tokens):
    """Step 3: a loader per slot of this rank, slot i the stream of examples (seed, i, k) from k = start, its workers
    deaf to the stop signals (this process saves); local rank 0 lists the folders first (data.py caches them). On
    rank 0, which evaluates: the held-out clips and masks, the same in every evaluation, run and world size, and the
    DAVIS videos of labelprop_data, checked whole. Returns (the loaders, iterating, held-out clips, videos)."""
    from data import ClipDataset, make_loader

    held_out, videos, error, setting = None, None, None, "data"
    if distributed and local_rank != 0:
        dist.barrier()
    try:
        base = ClipDataset(data, **clips, seed=seed, stream=slots[0], start=start)
        setting, val_stream = "val_data", 2 ** 31 - 1  # a stream id no training slot reaches
        if val_data and master:  # val_clips in whole micro-batches
            loader = make_loader(ClipDataset(val_data, **clips, seed=0, stream=val_stream), micro_batch)
            batches = list(itertools.islice(loader, math.ceil(val_clips / micro_batch)))
            masks = torch.rand(len(batches), micro_batch, n_target, tokens,
                               generator=torch.Generator().manual_seed(val_stream)).argsort(-1)
            # The reference to beat: each target frame predicted as a copy of the last source frame, every pixel.
            copy_last = sum(float(((b["source"][:, -1:].float() - b["target"].float()) / 255).square().mean())
                            for b in batches) / len(batches)
            held_out = dict(batches=batches, masks=masks, copy_last=copy_last)
        setting = "labelprop_data"
        if labelprop_data and master:
            from eval_labelprop import read_davis  # (its matplotlib import costs a quarter second)
            videos = read_davis(labelprop_data, [s for s in labelprop_sequences.split(",") if s] or None)
    except (ValueError, OSError, RuntimeError) as err:
        error = f"{setting}={settings[setting]!r}: {err}"
    if distributed and local_rank == 0:
        dist.barrier()
    stop_together(error)
    loaders = []
    for slot in slots:
        dataset = copy.copy(base)
        dataset.stream = slot
        loader = make_loader(dataset, micro_batch, num_workers=math.ceil(num_workers / len(slots)))
        loader.worker_init_fn = lambda worker: [signal.signal(sig, signal.SIG_IGN) for sig in stop_signals()]
        loaders.append(iter(loader))
    # Without torch's SIGCHLD handler a dead loader worker's error surfaces in next_batch (mid-step: a trace).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return loaders, held_out, videos


def build_model(init, model_config):
    """Step 4: a new model, or the weights of a .pt or .npz file, which must be a model of these settings."""
    if init in ("scratch", "resume"):
        return RVM(model_config)
    try:
        model = load_model(init, **{k: getattr(model_config, k) for k in ("mask_ratio", "grad_checkpoint",
                                                                          "decoder_memory", "base_grid")})
    except (ValueError, FileNotFoundError) as err:
        fail(f"init_from: {err}")
    differ = {k: (v, now) for k, v in asdict(model.config).items() if (now := getattr(model_config, k)) != v}
    if differ:
        fail(f"init_from={init!r} holds another model; settings that differ (file vs now): "
             + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in differ.items()))
    return model.train()


def shard(model, dev, spmd, fsdp, ddp):
    """Step 4, §4.1's "FSDP-like parameter and optimizer sharding" -> the model to call, the XLA mesh (SPMD) or None."""
    xla_mesh = None
    if fsdp:  # FSDP2 shards each transformer block, then the root: a block's weights are gathered just before it
        # runs. Under bf16 they are gathered in bf16 and the gradients reduced in float32; the sharded master weights
        # stay float32. Inputs are not cast (the loss compares with exact float32 targets); autocast decides each op.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        device_mesh = init_device_mesh(dev.type, (world_size,))
        mp_policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                          cast_forward_inputs=False) if dtype == "bfloat16" else MixedPrecisionPolicy())
        for block in model.blocks() + [model]:
            fully_shard(block, mesh=device_mesh, mp_policy=mp_policy)
    if spmd:  # FSDP as XLA does it (torch_xla's FSDPv2): each weight split along its largest dimension over a
        # mesh of all devices, the batch along its first; the compiler inserts the gathers, and the optimizer
        # state, made like the weights, is split the same way.
        import torch_xla.distributed.spmd as xs
        import torch_xla.runtime as xr

        n_devices = xr.global_runtime_device_count()
        if micro_batch % n_devices:
            fail(f"micro_batch={micro_batch} must be a multiple of the {n_devices} XLA devices it is split over")
        xla_mesh = xs.Mesh(np.arange(n_devices), (n_devices,), ("fsdp",))
        for p in model.parameters():
            shard_like_weight(p, xla_mesh)
        name, example = max(model.named_parameters(), key=lambda kv: kv[1].numel())
        print(f"SPMD over {n_devices} XLA devices: every weight split along its largest dimension, e.g. {name} "
              f"{list(example.shape)} as " + " + ".join(str(list(s.data.shape)) for s in xs.XLAShardedTensor(example)
                                                       .local_shards))
    net = model
    if compile:  # the position tables first: built inside the compiled graph, they would compile the step twice
        model.positions(*[image_size // model.config.patch_size] * 2, dev)
        net = torch.compile(model, backend="openxla" if device == "xla" else "inductor")
    if ddp:  # on XLA, as torch_xla's docs advise: gradients as views of the buckets
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if dev.type == "cuda" else None,
                                                        gradient_as_bucket_view=device == "xla")
    return net, xla_mesh


def shard_like_weight(t, xla_mesh):
    """SPMD: split a weight (or its optimizer state) along its largest dimension."""
    import torch_xla.distributed.spmd as xs
    largest = max(range(t.ndim), key=lambda d: t.shape[d])
    xs.mark_sharding(t, xla_mesh, tuple("fsdp" if d == largest else None for d in range(t.ndim)))


def learning_rate_at(step, peak_lr):
    """The learning rate of optimizer step `step` + 1 (§4.1): a linear warm-up that reaches peak_lr at
    step warmup_steps, then a cosine that reaches min_lr at step lr_decay_steps (0: max_steps), then min_lr."""
    s = step + 1
    if s <= warmup_steps:
        return peak_lr * s / warmup_steps
    progress = min(1.0, (s - warmup_steps) / max(1, (lr_decay_steps or max_steps) - warmup_steps))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


def next_batch(loader, slot, dev, xla_mesh):
    """A slot's next micro-batch: frames on the device as floats in [0, 1] (SPMD: each device its share), time gaps on
    the CPU (model.forward checks them there), bad videos data.py passed over. A worker's error is one line."""
    try:
        batch = next(loader)
    except Exception as err:  # noqa: BLE001 -- a worker's error arrives wrapped in its trace: keep the message
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        if "DataLoader worker" in str(err):  # killed: by the kernel's out-of-memory killer, most likely
            fail(f"slot {slot}: a loader worker died ({lines[-1]}): the kernel's out-of-memory killer ends the largest "
                 f"process. Lower num_workers (now {num_workers}) or micro_batch (now {micro_batch}). {kept()}",
                 all_ranks=True)
        fail(f"data error in slot {slot}: {lines[-1] if lines else repr(err)}", all_ranks=True)
    source, target = (batch[k].to(dev, non_blocking=True).float() / 255 for k in ("source", "target"))
    if xla_mesh is not None:
        import torch_xla.distributed.spmd as xs
        for x in (source, target):
            xs.mark_sharding(x, xla_mesh, ("fsdp",) + (None,) * (x.ndim - 1))
    return source, target, batch["deltas"], int(batch["skipped"].sum())


def mask_permutation(step, slot, tokens, dev):
    """Which target tokens stay visible (model.forward's mask_perm): a fresh shuffle per example and
    target frame, drawn from (seed, step, slot), so that it survives resuming and re-sharding."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, slot]).generate_state(1)[0]))
    return torch.rand(micro_batch, n_target, tokens, generator=g).argsort(dim=-1).to(dev, non_blocking=True)


@torch.no_grad()
def evaluate(step, model, dev, fsdp, autocast, held_out, labelprop_videos):
    """Held-out loss and J&F, logged by rank 0 (FSDP2: on a gathered copy); it draws no random numbers."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from eval_labelprop import davis_summary, evaluate as propagate_labels, model_features

    net = model
    if fsdp:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if master:
            with torch.device("meta"):
                net = RVM(model.config)
            net.to_empty(device=dev).load_state_dict(state)
    if not master:
        return
    row = {}
    if held_out:
        with autocast:  # the held-out loss at the training's precision, as its loss
            losses = [net(*(b[k].to(dev).float() / 255 for k in ("source", "target")), b["deltas"],
                          mask_perm=m.to(dev))[0].item() for b, m in zip(held_out["batches"], held_out["masks"],
                                                                         strict=True)]
        row = dict(val_loss=sum(losses) / len(losses), val_loss_copy_last=held_out["copy_last"])
    for name, per_frame in [("core", False), ("encoder", True)] if labelprop_videos else []:  # as eval_labelprop.py
        extract = functools.partial(model_features, net, per_frame=per_frame, device=dev)
        rows = propagate_labels("davis", labelprop_videos, extract, labelprop_resolution, model.config.patch_size,
                                dict(device=dev), say=lambda line: None)
        row[f"jf_{name}"] = davis_summary(rows)["jf"]
    write_log({"step": step, **row})
    tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))


def plot_loss(path):
    """Left: the training loss, the held-out loss, copying the last source frame (dashed) and the step-0 model
    (dotted). Right, with labelprop_data: J&F of core and encoder features, and at step 0 (dotted)."""
    from matplotlib.figure import Figure  # no pyplot: straight to a file, no display needed

    rows = log_rows()
    labelprop = any("jf_core" in r for r in rows)
    axes = Figure(figsize=(11 if labelprop else 6, 4)).subplots(1, 1 + labelprop, squeeze=False)[0]
    for ax, key in [(axes[0], "loss"), (axes[0], "val_loss"), (axes[-1], "jf_core"), (axes[-1], "jf_encoder")]:
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            line, = ax.plot(*zip(*points, strict=True), label=key, marker="." if key != "loss" else None)
        if points and points[0][0] == 0:
            ax.axhline(points[0][1], color=line.get_color(), ls=":", label=f"{key}, step 0")
    for copy_last in [r["val_loss_copy_last"] for r in rows if "val_loss_copy_last" in r][-1:]:
        axes[0].axhline(copy_last, color="gray", ls="--", label="val_loss, copying the last source frame")
    axes[0].set(ylabel="pixel MSE", yscale="log", title=out_dir)
    for ax in axes:
        ax.set(xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].figure.savefig(path, dpi=100, bbox_inches="tight")


def plot_reconstruction(path, source, target, reconstruction, mask, deltas, step):
    """One clip: its source frames, the masked targets (hidden patches grey), the model's
    reconstructions and the true targets, a row each."""
    from matplotlib.figure import Figure

    P = target.shape[-1] // mask.shape[-1]  # the patch size
    hidden = mask.repeat_interleave(P, 1).repeat_interleave(P, 2)[:, None]  # [T, 1, H, W]
    rows = {"source": source, "masked target": torch.where(hidden, 0.5, target),
            "reconstruction": reconstruction.clamp(0, 1), "target": target}
    cols = max(len(source), len(target))
    axes = (fig := Figure(figsize=(2 * cols, 2 * len(rows)))).subplots(len(rows), cols, squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for c in range(cols):
            axes[r, c].axis("off")
            if c < len(frames):
                axes[r, c].imshow(frames[c].permute(1, 2, 0).numpy(), interpolation="nearest")
                label = f"t={c}" if name == "source" else f"Δ={int(deltas[c])}"
                axes[r, c].set_title(f"{name}, {label}" if c == 0 else label, fontsize=8)
    fig.suptitle(f"step {step}")
    fig.savefig(path, dpi=100, bbox_inches="tight")


# -----------------------------------------------------------------------------------------------
# The machinery that keeps a run safe: settings read strictly, one-line failures that every rank takes together,
# the out_dir lock, the resume check, stop signals, atomic checkpoints, logs that survive a crash.


def configure(argv):
    """nanoGPT's configurator, strict: config files and --key=value override the settings in order, each checked
    against the type of its default; then they become this module's globals, with the paths in out_dir."""
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                sys.exit(f"train.py: {arg}: settings are given as --key=value")
            try:
                value = literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare word: --device=cpu
            if isinstance(settings.get(key), str) and not isinstance(value, (str, list, tuple)):
                value = text  # a text setting takes the text as written: --out_dir=2024
            settings[key] = check(key, value, "command line")
            continue
        if not os.path.isfile(arg):  # a config file: plain Python, run with the settings so far in scope
            sys.exit(f"train.py: config file not found: {arg}")
        namespace = dict(settings)
        try:
            exec(builtins.compile(open(arg).read(), arg, "exec"), namespace)  # `compile` is a setting here
        except Exception as err:  # noqa: BLE001 -- a broken config file gets its name and the error
            sys.exit(f"train.py: {arg}: {type(err).__name__}: {err}")
        for key, value in namespace.items():
            if not key.startswith("_") and not isinstance(value, (types.ModuleType, types.FunctionType, type)) \
                    and (key not in settings or value is not settings[key]):
                settings[key] = check(key, value, arg)
    globals().update(settings, ckpt_path=os.path.join(settings["out_dir"], "ckpt.pt"),
                     log_path=os.path.join(settings["out_dir"], "log.jsonl"))


def check(key, value, where):
    """The value of a setting as given in `where`, checked against the type of its default."""
    if key not in settings:
        close = difflib.get_close_matches(key, list(settings), n=3, cutoff=0.6)
        sys.exit(f"train.py: {where}: unknown setting {key!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                   else " (python train.py --help lists them)"))
    default = settings[key]
    if key == "data":  # a spec, or a mixture [(spec, weight), ...]
        ok = isinstance(value, str) or (isinstance(value, (list, tuple)) and value and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], str)
            and isinstance(s[1], (int, float)) and not isinstance(s[1], bool) for s in value))
        expected = "a string or a list of (spec, weight) pairs"
    elif isinstance(default, bool):
        ok, expected = isinstance(value, bool), "True or False"
    elif isinstance(default, float):
        ok, expected = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:
        ok, expected = isinstance(value, type(default)), type(default).__name__
    if not ok:
        sys.exit(f"train.py: {where}: {key} must be {expected} (default {default!r}), got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        close = difflib.get_close_matches(value, CHOICES[key], n=1, cutoff=0.3)
        sys.exit(f"train.py: {where}: {key}={value!r} is not one of {', '.join(map(repr, CHOICES[key]))}"
                 + (f"; did you mean {close[0]!r}?" if close else ""))
    return value


def print_help():
    """Every setting with its default and the comment on its line, under the settings block's '# --' headings, the
    model's read from model.RVMConfig, their one home. Lines are found by their shape, whatever their comments say."""
    lines = inspect.getsource(sys.modules[__name__]).splitlines() + inspect.getsource(RVMConfig).splitlines()
    print(__doc__.split("\n\n")[0] + "\n\nSettings (defaults; a config file or --name=value changes them):")
    for line in lines:  # name = default  # meaning (here), name: type = default  # meaning (RVMConfig)
        heading = re.match(r"# -- (.*)", line)
        setting = re.match(r"(\w+) = [^#]*#\s*(.*)", line) or re.match(r"    (\w+): \w+ = [^#]*#\s*(.*)", line)
        if heading:
            print(f"\n{heading[1]}")
        elif setting and setting[1] in settings:
            print(f"  {setting[1]} = {settings[setting[1]]!r}".ljust(36) + f"  {setting[2]}")


# A signal (save_signals) saves the run: its handler only takes note, and at the end of the step every rank
# learns whether any rank took one; then all save, and exit with REQUEUE. (A second signal changes nothing.)
REQUEUE = 99  # the exit status after saving on a signal: Grid Engine's "reschedule this job"
stop = {"signal": 0, "launcher_gone": 0}
last_saved = None  # the step of this run's newest checkpoint, named by every failure


def stop_signals():
    return [signal.Signals.__members__.get(name) for name in save_signals.split(",") if name]


def watch_launcher(launcher):
    """torchrun's agent starts its workers in sessions of their own: killed (SIGKILL, or a SIGUSR1, which it does not
    handle), it leaves them training on. So a worker whose launcher is gone stops as on a signal, saving with the
    others; if it has not ended a minute later (a peer gone with the launcher would hang it), it exits anyway."""
    while os.getppid() == launcher:
        time.sleep(0.5)
    stop["launcher_gone"] = 1
    time.sleep(60)
    os._exit(1)


def agree(flags, *values):
    """The largest of each value over all ranks (on the gloo group `flags`): at the end of a step all act alike."""
    values = torch.tensor(values, dtype=torch.float64)
    if distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=flags)
    return values.tolist()


def fail(message, all_ranks=False):
    """Stop with one line instead of a trace (RVM_TRACEBACK=1: with the trace). Where every rank fails
    alike, rank 0 speaks for all, and the others wait a moment, so that torchrun, stopping the rest
    when one process ends, does not stop rank 0 before it has spoken. os._exit skips the interpreter's
    teardown, which can abort a gloo process (see the end of main)."""
    if master or all_ranks:
        print(f"train.py: {message}" if world_size == 1 else f"train.py: rank {rank}: {message}", file=sys.stderr)
        if os.environ.get("RVM_TRACEBACK"):
            import traceback
            traceback.print_exc() if sys.exc_info()[0] else traceback.print_stack()
    else:
        time.sleep(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def stop_together(error):
    """Every rank stops if any rank met an error (rank 0 naming them all), so none is left waiting.
    (On XLA through torch_xla's host rendezvous: its process group carries XLA tensors only.)"""
    if distributed:
        if device == "xla":
            import torch_xla.core.xla_model as xm
            errors = [p.decode() or None for p in xm.rendezvous("stop_together", (error or "").encode())]
        else:
            errors = [None] * world_size
            dist.all_gather_object(errors, error)
        error = "; ".join(sorted({e for e in errors if e})) or None
    if error:
        fail(error)


# A resume continues exactly what was trained, so every setting that changes it must be the checkpoint's, unless
# allow_changes names it. The rest (where to log, how often, on what hardware; max_steps, which counts through
# lr_decay_steps, the cosine's length) may change.
OPERATIONAL = {"out_dir", "init_from", "log_interval", "eval_interval", "ckpt_interval", "ckpt_minutes", "device",
               "sharding", "compile", "peak_flops_per_device", "threads", "grad_checkpoint", "allow_changes",
               "max_steps", "num_workers", "save_signals", "val_data", "val_clips", "labelprop_data",
               "labelprop_resolution", "labelprop_sequences"}


def claim_out_dir():
    """An out_dir belongs to one run: rank 0 holds out_dir/lock (flock) for the run's whole life, and a second run
    stops at once, naming the holder. The kernel drops a lock when its process dies, so the lock of a killed run is
    simply taken over. Then a resume's checkpoint is read, before the data and the model: it says where the data
    stops and what was trained. Returns how the run starts ('scratch', 'resume' or a weights file; init_from='auto'
    decided here), the checkpoint to continue or None, and the settings changed (allowed ones only)."""
    global lock_file, last_saved
    error = None
    if master:
        lock_file = open(os.path.join(out_dir, "lock"), "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.seek(0)
            error = (f"{out_dir} is in use by another training run ({lock_file.read().strip() or 'holder unknown'}): "
                     "wait for it to end or stop it, or choose another out_dir")
    stop_together(error)
    init = ("resume" if os.path.exists(ckpt_path) else "scratch") if init_from == "auto" else init_from
    if init != "resume" and os.path.exists(ckpt_path):
        fail(f"{out_dir} holds a run ({ckpt_path}); a new one would overwrite it. --init_from=resume continues it; "
             "to start afresh, choose another out_dir (or delete that checkpoint)")
    if init == "resume" and not os.path.isfile(ckpt_path):
        fail(f"init_from='resume' but {ckpt_path} does not exist (set out_dir to the run to continue)")
    if master:  # out_dir is this run's now: say whose, and clear what a crash left half-written
        lock_file.truncate(0)
        lock_file.write(f"train.py, pid {os.getpid()} on {socket.gethostname()}, "
                        f"since {time.strftime('%Y-%m-%d %H:%M')}")
        lock_file.flush()
        with contextlib.suppress(FileNotFoundError):
            os.remove(ckpt_path + ".tmp")
    if init != "resume":
        return init, None, {}
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        assert {"model", "optimizer", "step", "config", "data"} <= set(ckpt)
    except Exception:  # noqa: BLE001 -- empty, truncated, or not ours: one message
        fail(f"{ckpt_path} ({os.path.getsize(ckpt_path)} bytes) is not a readable train.py checkpoint: empty, "
             "damaged, or another kind of file. Restore it, or start afresh in another out_dir")
    before, now = ({**{k: json.dumps(v) for k, v in config.items() if k not in OPERATIONAL},  # json: (1,) == [1]
                    "lr_decay_steps": str(config.get("lr_decay_steps") or config.get("max_steps"))}
                   for config in (ckpt["config"], settings))
    changed = {k: [before.get(k), now[k]] for k in now if before.get(k) != now[k]}
    allowed = set(allow_changes.split(","))
    allowed |= {"lr_decay_steps"} if "max_steps" in allowed else set()
    refused = sorted(set(changed) - allowed)
    if refused:
        fail(f"{ckpt_path} was trained with other settings: " + ", ".join(f"{k} {changed[k][0]} -> {changed[k][1]}"
             for k in refused) + " (lr_decay_steps follows max_steps when it is 0). To continue exactly, use the "
             f"checkpoint's settings; to change them, name them: --allow_changes={','.join(refused)}")
    last_saved = ckpt["step"]
    if last_saved >= max_steps:
        print(f"train.py: {ckpt_path} is at step {last_saved}, max_steps={max_steps}: nothing to do")
        os._exit(0)
    return init, ckpt, changed


def save_checkpoint(step, model, optimizer, model_config):
    """Everything needed to continue exactly: weights, optimizer, step, settings and the data position (the data and the
    masks are functions of these; nothing else is random). Plain tensors and Python values, so it loads with
    weights_only=True; full state dicts, so model.load_model reads it. Written to a temporary file and then renamed: a
    crash while writing leaves the previous checkpoint as it was. Returns an error message, or None."""
    global last_saved
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0's CPU
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if master:
        ckpt = {"model": model_state, "model_config": asdict(model_config), "optimizer": optim_state, "step": step,
                "config": settings,
                "data": {"slots": batch_size // micro_batch, "micro_batch": micro_batch, "examples": step * batch_size}}
        try:
            with open(ckpt_path + ".tmp", "wb") as f:
                torch.save(ckpt, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(ckpt_path + ".tmp", ckpt_path)
        except (OSError, RuntimeError) as err:  # a full disk, say: the last good checkpoint stays as it is
            with contextlib.suppress(OSError):
                os.remove(ckpt_path + ".tmp")
            return (f"could not write {ckpt_path} at step {step} ({str(err).splitlines()[0]}); is the disk full? "
                    f"Make room. {kept()}")
    last_saved = step
    return None


def kept():
    return (f"The last checkpoint, {ckpt_path} (step {last_saved}), is kept: continue with --init_from=resume."
            if last_saved is not None else "No checkpoint was written.")


def log_rows():
    """The rows of log.jsonl (none before it exists); a last line cut short by a crash is left out."""
    rows = []
    with contextlib.suppress(FileNotFoundError), open(log_path) as f:
        for line in filter(str.strip, f):
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def write_log(row):
    try:
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as err:  # a full disk stops the run at the next checkpoint, not here
        tqdm.write(f"train.py: warning: could not write {log_path}: {err}")


if __name__ == "__main__":
    main()
