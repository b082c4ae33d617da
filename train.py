"""Train RVM with the paper's recipe (§4.1): one process, or many under torchrun.

    python train.py                                   # the white-noise square demo on a CPU
    torchrun --standalone --nproc_per_node=8 train.py configs/b.py --data=data/videos  # 8 GPUs

data/videos: your videos or folders of frames. Settings are the names below: their defaults, then
each config file (plain Python), then --name=value (a Python literal, or a bare word for text), in
that order; `python train.py --help` lists them all.

The global batch is split as batch_size = world size x grad accumulation x micro_batch, and the
data into batch_size / micro_batch independent streams of examples, stream i being
data.ClipDataset(stream=i). Process r feeds streams r*A .. r*A+A-1 to its A micro-batches, and the
mask permutations of a micro-batch are drawn from (seed, step, stream). So what a step trains on
does not depend on the number of processes: a run can resume on another number of GPUs and
continue the same data.
"""

import contextlib
import copy
import functools
import importlib.util
import inspect
import itertools
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, fields

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from model import RVM, RVMConfig, load_model, peak_flops
from safeguards import (REQUEUE, agree_to_stop, catch_save_signals, claim_out_dir, configure,
                        distributed, fail, ignore_save_signals, kept, local_rank, master,
                        print_help, rank, read_checkpoint, stop_together, world_size,
                        write_checkpoint)

# -----------------------------------------------------------------------------------------------
# Settings. The defaults are RVM-S with the paper's recipe (§4.1); configs/*.py change them.
_names = set(globals()) | {"_names"}  # settings: the names assigned from here on
# -- output
out_dir = "out"  # checkpoint, log and pictures go here
init_from = "scratch"  # 'scratch', 'resume' (out_dir/ckpt.pt), 'auto' (resume if any), a .pt/.npz
log_interval = 10  # steps between lines in out_dir/log.jsonl
eval_interval = 1000  # steps between evaluations (below), out_dir/loss.png and reconstruction.png
ckpt_interval = 1000  # steps between checkpoints (and one at the end); 0: only at the end
ckpt_minutes = 0.0  # also a checkpoint this many minutes after the last; 0: by steps only
save_signals = "SIGTERM,SIGUSR1"  # on these all processes end the step, save, and exit with 99
# -- data (supplement §7): 64-frame windows, 4 source frames, 4 targets 4..48 frames after them
data = "data/videos"  # a folder of videos or frame folders, 'noise_square[:...]', [(spec, w), ...]
image_size = 256  # frames are cropped and resized to image_size x image_size (§4.1)
n_source = 4  # source frames per clip, unrolled through the core
n_target = 4  # target frames per clip, reconstructed
gap_min = 4  # each target lies gap_min..gap_max frames after the last source frame
gap_max = 48  # (see gap_min)
window = 64  # frames per training clip
per_frame_crop = False  # a crop box per frame instead of one per clip (the paper's "frame-level")
repeated_sampling = 1  # examples from one decoded window, each its own frames and crop; paper: 1
num_workers = 8  # loader processes per rank
# -- evaluation at step 0 and every eval_interval steps (log.jsonl, loss.png): is it learning?
val_data = ""  # held-out videos (a spec as data): their loss, and copying the last source frame's
val_clips = 64  # held-out clips, fixed (frames, crops, gaps, masks) for every step, run, world size
labelprop_data = ""  # a DAVIS folder: J&F of core and encoder features (two eval_labelprop.py runs)
labelprop_resolution = ()  # its frames' (H, W); (): the paper's (Table 8); a small model wants less
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
dtype = "bfloat16"  # 'bfloat16' (§4.1: autocast forward and backward, float32 weights), 'float32'
sharding = "fsdp"  # over several processes: 'fsdp' (FSDP2 per block, §4.1), 'ddp', or 'none'
compile = False  # torch.compile the model
peak_flops_per_device = 0.0  # the FLOP/s that MFU is counted against; 0: model.peak_flops's figure
threads = 0  # torch's CPU threads per process; 0: its default. Tiny models run fastest on 1
seed = 0  # seeds the data, the masks and the initial weights
allow_changes = ""  # settings a resume may change from the checkpoint's, e.g. 'learning_rate,seed'
# -- model: every field of model.RVMConfig (RVM-S, Table 5)
globals().update({f.name: f.default for f in fields(RVMConfig)})
settings = {k: v for k, v in globals().items() if k not in _names}
CHOICES = dict(device=("auto", "cuda", "cpu", "xla"), dtype=("bfloat16", "float32"),
               sharding=("fsdp", "ddp", "none"))
POSITIVE = ("batch_size", "micro_batch", "max_steps", "log_interval", "eval_interval", "val_clips",
            "image_size", "patch_size", "width", "enc_heads", "core_heads", "dec_width",
            "dec_heads", "base_grid", "repeated_sampling")  # >= 1; the other numbers >= 0


def main():
    """The set-up in five steps, then the loop."""
    # 1. Settings, each checked, then checked against each other.
    model_config = read_settings(sys.argv[1:])

    # 2. Processes, a device each (cuda:LOCAL_RANK, or the CPU with gloo); out_dir, this run's
    # alone; a resume's checkpoint: where the data stops, what was trained.
    dev, flags = start_processes()
    init = claim_out_dir(out_dir, ckpt_path, init_from)
    ckpt, changed = read_checkpoint(ckpt_path, settings) if init == "resume" else (None, {})
    start_step = ckpt["step"] if ckpt else 0

    # 3. Data: this rank's streams, from where the checkpoint left them (a changed batch split: the
    # examples, re-split). Made before the model is seeded (iter(DataLoader) draws a seed): every
    # world size builds the same initial model.
    streams = range(rank * grad_accum, (rank + 1) * grad_accum)
    start = ckpt["data"]["examples"] // (batch_size // micro_batch) if ckpt else 0
    loaders, held_out, labelprop_videos, skipped = load_data(streams, start)

    # 4. The model, sharded, and its optimizer. Nothing after this draws from the global generators.
    torch.manual_seed(seed)
    raw_model = build_model(init, model_config).to(dev)  # the module optimizer and checkpoints hold
    xla_mesh = shard(raw_model, dev)
    model = compile_and_wrap(raw_model, dev)
    optimizer = build_optimizer(raw_model, ckpt, xla_mesh)
    del ckpt  # the mmap'd file is no longer needed

    # 5. Logs on rank 0: the run in one line, out_dir/log.jsonl, a progress bar.
    meter = start_log(init, changed, start_step, raw_model, dev, skipped)
    progress = tqdm(total=max_steps, initial=start_step, disable=not master, dynamic_ncols=True,
                    unit="step")

    # The loop: one optimizer step per global batch.
    step = start_step
    stopping = False
    t_saved = time.monotonic()
    evaluations = val_data or labelprop_data
    if evaluations and start_step == 0:  # the references: the model before training
        evaluate(0, raw_model, dev, held_out, labelprop_videos)
    while step < max_steps:
        plotting = master and ((step + 1) % eval_interval == 0 or step + 1 == max_steps)
        example = train_step(step, model, raw_model, optimizer, loaders, dev, xla_mesh, meter,
                             plotting)
        step += 1
        progress.update(1)
        due = ckpt_minutes > 0 and time.monotonic() - t_saved >= 60 * ckpt_minutes
        signum, launcher_gone, due = agree_to_stop(flags, due)
        stopping = (signum or launcher_gone) and step < max_steps
        saving = (ckpt_interval and step % ckpt_interval == 0) or step == max_steps
        saving = saving or due or stopping
        if step % log_interval == 0 or saving:
            log_step(step, meter, progress)
        t_pause = time.perf_counter()
        if evaluations and not stopping and (step % eval_interval == 0 or step == max_steps):
            evaluate(step, raw_model, dev, held_out, labelprop_videos)
        if plotting and not stopping:
            save_pictures(step, example)
        if saving:
            stop_together(save_checkpoint(step, raw_model, optimizer, model_config))
            t_saved = time.monotonic()
        meter["start"] += time.perf_counter() - t_pause  # log_step's rates: training time only
        if stopping:
            break
    finish(step, stopping, signum, loaders, progress)


def read_settings(argv):
    """Step 1, before any process group or model: the settings, checked, become globals, with what
    follows from them. Returns the model's config."""
    global ckpt_path, log_path, labelprop_resolution, grad_accum, spmd, fsdp, ddp, peak_lr, tokens
    if "--help" in argv or "-h" in argv:
        print_help(__doc__, settings, [open(__file__).read(), inspect.getsource(RVMConfig)])
        sys.exit(0)
    if not argv:
        argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                             "noise_square.py")]
        print("train.py: no arguments, so the built-in default: the white-noise square demo "
              f"({argv[0]})")
    configure(settings, argv, CHOICES)
    globals().update(settings)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    log_path = os.path.join(out_dir, "log.jsonl")
    if labelprop_data and not labelprop_resolution:
        from eval_labelprop import RESOLUTION  # (its matplotlib import costs a quarter second)
        labelprop_resolution = RESOLUTION["davis"]
    low = [f"{k}={v} must be >= {int(k in POSITIVE)}" for k, v in settings.items()
           if type(v) in (int, float) and v < int(k in POSITIVE)]
    if low:
        fail("; ".join(low))
    if batch_size % (micro_batch * world_size):
        fail(f"batch_size={batch_size} must be a positive multiple of micro_batch * world_size = "
             f"{micro_batch} * {world_size}")
    grad_accum = batch_size // (micro_batch * world_size)
    spmd = device == "xla" and sharding == "fsdp"  # XLA's sharding: the compiler splits one program
    fsdp = sharding == "fsdp" and distributed and not spmd
    ddp = sharding == "ddp" and distributed
    try:
        model_config = RVMConfig(**{f.name: settings[f.name] for f in fields(RVMConfig)})
    except ValueError as err:
        fail(f"model settings: {err}")
    P = model_config.patch_size
    peak_lr = learning_rate or base_lr * batch_size / 256
    tokens = (image_size // P) ** 2  # per frame
    sizes = labelprop_resolution
    for wrong, why in [  # settings that cannot work together, named before any work
            (max(beta1, beta2) >= 1, f"beta1={beta1} and beta2={beta2} must be < 1"),
            (image_size % P, f"image_size={image_size} is not a multiple of patch_size={P}"),
            (labelprop_data and (len(sizes) != 2 or any(x < 1 or x % P for x in sizes)),
             f"labelprop_resolution={sizes} must be (H, W), multiples of patch_size"),
            (window > model_config.n_deltas, f"window={window} > n_deltas="
             f"{model_config.n_deltas}: the decoder one-hot encodes each target's offset Δ < "
             "n_deltas from the first source frame; a window allows up to window - 1"),
            (device == "cuda" and not torch.cuda.is_available(), "device='cuda' but torch sees no "
             "CUDA GPU (use --device=cpu, or install a CUDA build of torch)"),
            (device == "xla" and not importlib.util.find_spec("torch_xla"), "device='xla' needs "
             "torch_xla, which is not installed (README: 'On TPUs')"),
            (spmd and distributed, "sharding='fsdp' on XLA is SPMD: one process over all its "
             "devices; start it with python, not torchrun (or use --sharding=ddp, one process per "
             "device)"),
            (distributed and sharding == "none", f"sharding='none' with {world_size} processes "
             f"would train {world_size} unsynchronised copies; use fsdp or ddp"),
            (init_from not in ("scratch", "resume", "auto") and not os.path.isfile(init_from),
             f"init_from={init_from!r}: no such file (expected 'scratch', 'resume', 'auto' or a "
             ".pt or .npz checkpoint)")]:
        if wrong:
            fail(why)
    for pointless, why in [
            (warmup_steps >= max_steps, f"warmup_steps={warmup_steps} >= max_steps={max_steps}: "
             "the learning rate never reaches its peak"),
            (peak_lr < 1e-6, f"the peak learning rate is {peak_lr:.2g} (base_lr * batch_size / 256"
             f" = {base_lr} * {batch_size} / 256): nothing will be learned; set learning_rate"),
            (tokens > 4096, f"{tokens} tokens per frame (image_size / patch_size = "
             f"{image_size // P} per side): attention costs grow with their square")]:
        if pointless and master:
            print(f"train.py: warning: {why}", file=sys.stderr)
    return model_config


def start_processes():
    """Step 2 (on XLA the process group first, as torch_xla asks). Returns the device and a gloo
    group for agree_to_stop (None: not needed)."""
    catch_save_signals(save_signals)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        fail(f"out_dir={out_dir!r}: cannot create it ({err.strerror})")
    if threads:
        torch.set_num_threads(threads)
    device_type = device
    if device == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = {"cuda": "nccl", "xla": "xla"}.get(device_type, "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if device_type == "xla":
        import torch_xla
        import torch_xla.distributed.xla_backend  # noqa: F401 -- registers the 'xla' backend
        import torch_xla.runtime as xr
        if spmd:
            xr.use_spmd()  # before any XLA tensor exists
        if os.environ.get("PJRT_DEVICE", "CPU") != "CPU":  # the CPU runtime cannot read it back
            xr.initialize_cache(os.path.join(out_dir, "xla_cache"))  # a resume does not recompile
    if distributed:
        dist.init_process_group(backend, init_method="xla://" if device_type == "xla" else None)
        if dist.get_world_size() != world_size:
            fail(f"torchrun started {world_size} processes, but the {backend} process group holds "
                 f"{dist.get_world_size()}: they would train unsynchronised copies (torch_xla's "
                 "CPU runtime runs each process alone; there, use one process with "
                 "--sharding=fsdp over its devices)")
    flags = None  # flags need no device: a gloo group beside nccl or xla
    if distributed and backend != "gloo":
        flags = dist.new_group(backend="gloo")
    if device_type == "xla":
        return torch_xla.device(), flags
    return torch.device(device_type, local_rank if device_type == "cuda" else None), flags


def load_data(streams, start):
    """Step 3: {stream: its loader from example `start` on, iterating} for this rank's streams;
    local rank 0 lists the folders first (data.py caches them). On rank 0, which evaluates: the
    held-out clips and mask permutations, and labelprop_data's DAVIS videos, checked whole. And
    the videos passed over at start-up, by reason."""
    from data import ClipDataset, make_loader

    clips = dict(image_size=image_size, n_source=n_source, n_target=n_target, gap_min=gap_min,
                 gap_max=gap_max, window=window, per_frame_crop=per_frame_crop)
    held_out = None
    videos = None
    error = None
    setting = "data"
    if distributed and local_rank != 0:
        dist.barrier()
    try:
        base = ClipDataset(data, **clips, repeated_sampling=repeated_sampling, seed=seed,
                           stream=streams[0], start=start)
        setting = "val_data"
        val_stream = 2 ** 31 - 1  # a stream no training stream reaches
        if val_data and master:  # val_clips in whole micro-batches
            loader = make_loader(ClipDataset(val_data, **clips, seed=0, stream=val_stream),
                                 micro_batch)
            batches = list(itertools.islice(loader, math.ceil(val_clips / micro_batch)))
            g = torch.Generator().manual_seed(val_stream)
            mask_perms = torch.rand(len(batches), micro_batch, n_target, tokens, generator=g)
            # The reference to beat: each target frame predicted as the last source frame.
            copy_last = [((b["source"][:, -1:].float() - b["target"].float()) / 255).square().mean()
                         for b in batches]
            held_out = dict(batches=batches, mask_perms=mask_perms.argsort(-1),
                            copy_last=sum(map(float, copy_last)) / len(batches))
        setting = "labelprop_data"
        if labelprop_data and master:
            from eval_labelprop import read_davis
            sequences = [s for s in labelprop_sequences.split(",") if s]
            videos = read_davis(labelprop_data, sequences or None)
    except (ValueError, OSError, RuntimeError) as err:
        error = f"{setting}={settings[setting]!r}: {err}"
    if distributed and local_rank == 0:
        dist.barrier()
    stop_together(error)
    loaders = {}
    for stream in streams:
        dataset = copy.copy(base)
        dataset.stream = stream
        loader = make_loader(dataset, micro_batch, num_workers=math.ceil(num_workers / grad_accum))
        loader.worker_init_fn = functools.partial(ignore_save_signals, save_signals)
        loaders[stream] = iter(loader)
    # Not torch's SIGCHLD handler (a dead worker: a trace mid-step): next_batch meets the error.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return loaders, held_out, videos, base.skipped


def build_model(init, model_config):
    """Step 4: a new model, or the weights of a .pt or .npz file, which must be a model of these
    settings."""
    if init in ("scratch", "resume"):
        return RVM(model_config)
    free = ("mask_ratio", "grad_checkpoint", "decoder_memory", "base_grid")  # not in the weights
    try:
        model = load_model(init, **{k: getattr(model_config, k) for k in free})
    except (ValueError, FileNotFoundError) as err:
        fail(f"init_from: {err}")
    differ = [f"{k}={v!r} vs {getattr(model_config, k)!r}" for k, v in asdict(model.config).items()
              if getattr(model_config, k) != v]
    if differ:
        fail(f"init_from={init!r} holds another model; settings that differ (file vs now): "
             + ", ".join(differ))
    return model.train()


def shard(model, dev):
    """Step 4, §4.1's "FSDP-like parameter and optimizer sharding", in place. Returns the XLA mesh
    (SPMD) or None."""
    if fsdp:  # FSDP2 per transformer block, then the root: a block's weights are gathered just
        # before it runs (in bf16 under bf16), the gradients reduced in float32. Inputs are not
        # cast: the loss compares with float32 targets.
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        device_mesh = init_device_mesh(dev.type, (world_size,))
        mp_policy = MixedPrecisionPolicy()
        if dtype == "bfloat16":
            mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                             cast_forward_inputs=False)
        for block in model.blocks() + [model]:
            fully_shard(block, mesh=device_mesh, mp_policy=mp_policy)
    if not spmd:
        return None
    # FSDP as XLA does it (torch_xla's FSDPv2), over a mesh of all devices: the batch split along
    # its first dimension, the optimizer state (made like the weights) as they are; the compiler
    # inserts the gathers.
    import torch_xla.distributed.spmd as xs
    import torch_xla.runtime as xr

    n_devices = xr.global_runtime_device_count()
    if micro_batch % n_devices:
        fail(f"micro_batch={micro_batch} must be a multiple of the {n_devices} XLA devices it is "
             "split over")
    xla_mesh = xs.Mesh(np.arange(n_devices), (n_devices,), ("fsdp",))
    for p in model.parameters():
        shard_like_weight(p, xla_mesh)
    name, example = max(model.named_parameters(), key=lambda kv: kv[1].numel())
    shards = [str(list(s.data.shape)) for s in xs.XLAShardedTensor(example).local_shards]
    print(f"SPMD over {n_devices} XLA devices: every weight split along its largest dimension, "
          f"e.g. {name} {list(example.shape)} as " + " + ".join(shards))
    return xla_mesh


def shard_like_weight(t, xla_mesh):
    import torch_xla.distributed.spmd as xs
    largest = max(range(t.ndim), key=lambda d: t.shape[d])
    xs.mark_sharding(t, xla_mesh, tuple("fsdp" if d == largest else None for d in range(t.ndim)))


def compile_and_wrap(model, dev):
    """Step 4: the module to call (torch.compile's, DDP's)."""
    net = model
    if compile:  # the position tables first: built inside the graph, they compile the step twice
        grid = image_size // model.config.patch_size
        model.positions(grid, grid, dev)
        net = torch.compile(model, backend="openxla" if device == "xla" else "inductor")
    if ddp:  # on XLA, as torch_xla's docs advise: gradients as views of the buckets
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[local_rank] if dev.type == "cuda" else None,
            gradient_as_bucket_view=device == "xla")
    return net


def build_optimizer(model, ckpt, xla_mesh):
    """Step 4: AdamW (§4.1), decoupled weight decay on weight matrices (linear and conv kernels);
    a resume's state put back (set_state_dict shards the full state dicts)."""
    decay = [p for n, p in model.named_parameters()
             if p.ndim >= 2 and n not in ("cls_token", "mask_token")]
    no_decay = [p for p in model.parameters() if all(p is not q for q in decay)]  # biases, norms
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=0.0, betas=(beta1, beta2))
    if ckpt is None:
        return optimizer
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    set_state_dict(model, optimizer, model_state_dict=ckpt["model"],
                   optim_state_dict=ckpt["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    if xla_mesh is not None:  # loaded optimizer state arrives whole: split it as its weight is
        for state in optimizer.state.values():
            for t in state.values():
                if t.ndim:
                    shard_like_weight(t, xla_mesh)
    return optimizer


def start_log(init, changed, start_step, model, dev, skipped):
    """Step 5: on rank 0, out_dir/log.jsonl anew (a resume keeps the lines up to its checkpoint and
    notes the changes allowed). Returns what log_step reads; `skipped`: start-up's bad videos."""
    flops = model.flops_per_example(image_size, n_source, n_target)
    peak = peak_flops_per_device
    if master:
        peak = peak or peak_flops(dev, torch.bfloat16 if dtype == "bfloat16" else torch.float32)
        rows = []
        if init == "resume":
            rows = [r for r in log_rows() if r["step"] <= start_step]
        if changed:
            rows.append({"step": start_step, "resumed_with_changes": changed})
        with open(log_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"RVM {model.num_params('all') / 1e6:.1f}M parameters, {flops / 1e9:.2f} GFLOPs per "
              f"example | device {dev}, {dtype}, sharding "
              f"{sharding if distributed or spmd else 'none'}, {world_size} process(es) | global "
              f"batch {batch_size} = {world_size} x {grad_accum} micro-batches x {micro_batch} | "
              f"peak lr {peak_lr:.3g} | steps {start_step}..{max_steps}", flush=True)
    zero = torch.zeros((), device=dev)
    from data import SKIPS
    at_start = torch.tensor([skipped[reason] for reason in SKIPS])  # every rank counts the same
    return dict(flops=flops, peak=peak, step=start_step, loss=zero, grad_norm=zero.clone(),
                data_wait=0.0, skipped=torch.zeros(len(SKIPS), dtype=torch.int64, device=dev),
                skipped_at_start=at_start, xla=[0, 0], warned=False, start=time.perf_counter())


def learning_rate_at(step):
    """The learning rate of optimizer step `step` + 1 (§4.1): linear warm-up, cosine, min_lr."""
    s = step + 1
    if s <= warmup_steps:
        return peak_lr * s / warmup_steps
    progress = min(1.0, (s - warmup_steps) / max(1, (lr_decay_steps or max_steps) - warmup_steps))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


def train_step(step, model, raw_model, optimizer, loaders, dev, xla_mesh, meter, plotting):
    """A micro-batch from each of this rank's streams, forward and backward, then the clipped
    update. Loss and gradient norm stay on the device (a read would stall it, and on XLA run the
    step's graph twice). Returns the first clip when plotting."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(step)
    example = None
    for m, (stream, loader) in enumerate(loaders.items()):
        t = time.perf_counter()
        source, target, deltas, skipped = next_batch(loader, stream, dev, xla_mesh)
        meter["data_wait"] += time.perf_counter() - t
        meter["skipped"] += skipped
        mask_perm = mask_permutation(step, stream, dev)
        # DDP all-reduces the gradients with the last micro-batch only; FSDP2 reduce-scatters after
        # each, which keeps only a shard of the gradients in memory.
        with model.no_sync() if ddp and m < grad_accum - 1 else contextlib.nullcontext():
            with autocast(dev):
                loss, reconstruction, mask = model(source, target, deltas, mask_perm=mask_perm)
            (loss / grad_accum).backward()
        meter["loss"] += loss.detach() / grad_accum
        if plotting and m == 0:  # kept on the device: copied out after the step, not in its middle
            example = [x[0].detach() for x in (source, target, reconstruction.float(), mask,
                                               deltas)]
    max_norm = grad_clip if grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    meter["grad_norm"] = torch.maximum(meter["grad_norm"], grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "xla":
        import torch_xla
        torch_xla.sync()  # the step's graph runs here
    return example


def autocast(dev):
    """bf16 autocast (§4.1) when dtype='bfloat16'."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def next_batch(loader, stream, dev, xla_mesh):
    """A stream's next micro-batch: frames on the device as floats in [0, 1] (SPMD: each device its
    share), time gaps on the CPU, the draws data.py passed over (by reason, SKIPS). A worker's
    error is one line."""
    try:
        batch = next(loader)
    except Exception as err:  # noqa: BLE001 -- a worker's error comes in its trace
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        if "DataLoader worker" in str(err):
            fail(f"stream {stream}: a loader worker died ({lines[-1]}): the kernel's out-of-memory "
                 f"killer ends the largest process. Lower num_workers (now {num_workers}) or "
                 f"micro_batch (now {micro_batch}). {kept()}", all_ranks=True)
        fail(f"data error in stream {stream}: {lines[-1] if lines else repr(err)}", all_ranks=True)
    source, target = on_device(batch, dev)
    if xla_mesh is not None:
        import torch_xla.distributed.spmd as xs
        for x in (source, target):
            xs.mark_sharding(x, xla_mesh, ("fsdp",) + (None,) * (x.ndim - 1))
    return source, target, batch["deltas"], batch["skipped"].sum(0).to(dev, non_blocking=True)


def on_device(batch, dev):
    return [batch[k].to(dev, non_blocking=True).float() / 255 for k in ("source", "target")]


def mask_permutation(step, stream, dev):
    """Which target tokens stay visible (model.forward's mask_perm): a fresh shuffle per example and
    target frame, from (seed, step, stream)."""
    state = np.random.SeedSequence([seed, step, stream]).generate_state(1)[0]
    g = torch.Generator().manual_seed(int(state))
    perm = torch.rand(micro_batch, n_target, tokens, generator=g).argsort(dim=-1)
    return perm.to(dev, non_blocking=True)


def log_step(step, meter, progress):
    """log.jsonl's line: a loss that is not finite stops the run before it is saved."""
    skipped = meter["skipped"].clone()  # the draws of this rank's streams that met a bad video
    if distributed:  # every rank sees the same mean loss: on a NaN they all stop together
        dist.all_reduce(meter["loss"])
        dist.all_reduce(skipped)  # ... and of every rank's
    steps = step - meter["step"]
    loss = meter["loss"].item() / world_size / steps
    grad_norm = meter["grad_norm"].item()
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        which = f"step {step}" if steps == 1 else f"steps {meter['step'] + 1}..{step}"
        fail(f"{which}: loss {loss}, gradient norm {grad_norm}: not finite: lower the learning "
             f"rate or check the data. {kept()}")
    now = time.perf_counter()
    elapsed = now - meter["start"]
    examples_per_s = steps * batch_size / elapsed
    mfu = meter["flops"] * examples_per_s / world_size / meter["peak"] if meter["peak"] else None
    data_wait = meter["data_wait"] / elapsed  # the share of the time spent in next_batch
    lr = learning_rate_at(step - 1)
    if master:
        row = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "examples": step * batch_size, "examples_per_s": examples_per_s, "mfu": mfu,
               "data_wait": data_wait}
        from data import SKIPS  # bad videos passed over at start-up, and drawn since, by reason
        skipped = meter["skipped_at_start"] + skipped.cpu()
        row["skipped"] = dict(zip(SKIPS, skipped.tolist(), strict=True))
        if device == "xla":  # graphs run per step, compilations since the last line: 1, 0 if steady
            import torch_xla.core.xla_model as xm
            import torch_xla.debug.metrics as metrics
            xm.wait_device_ops()
            count = lambda key: (metrics.metric_data(key) or [0])[0]
            counts = [count("ExecuteTime") + count("ExecuteReplicatedTime"), count("CompileTime")]
            row.update(xla_graphs_per_step=(counts[0] - meter["xla"][0]) / steps,
                       xla_compiles=counts[1] - meter["xla"][1])
            meter["xla"] = counts
        write_log(row)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{examples_per_s:.1f}",
                             mfu="n/a" if mfu is None else f"{100 * mfu:.1f}%",
                             data_wait=f"{data_wait:.0%}")
    if master and data_wait > 0.1 and not meter["warned"]:
        meter["warned"] = True
        tqdm.write(f"train.py: warning: {data_wait:.0%} of the time waiting for data: more workers "
                   f"(--num_workers, now {num_workers}), prepared data (python data.py "
                   "--src=VIDEOS --dst=PREPARED, then --data=PREPARED), or repeated sampling "
                   "(--repeated_sampling=R)")
    meter["loss"].zero_()
    meter["grad_norm"].zero_()
    meter.update(step=step, start=now, data_wait=0.0)


@torch.no_grad()
def evaluate(step, model, dev, held_out, labelprop_videos):
    """Held-out loss and J&F, logged by rank 0 (FSDP2: on a gathered copy); it draws no random
    numbers."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from eval_labelprop import davis_summary, model_features, propagate_and_score

    net = model
    if fsdp:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        if master:
            with torch.device("meta"):
                net = RVM(model.config)
            net.to_empty(device=dev).load_state_dict(state)
    if not master:
        return
    row = {}
    if held_out:
        losses = []
        with autocast(dev):  # the training's precision
            for b, mask_perm in zip(held_out["batches"], held_out["mask_perms"], strict=True):
                loss = net(*on_device(b, dev), b["deltas"], mask_perm=mask_perm.to(dev))[0]
                losses.append(loss.item())
        row = dict(val_loss=sum(losses) / len(losses), val_loss_copy_last=held_out["copy_last"])
    if labelprop_videos:  # as eval_labelprop.py does it
        for name, per_frame in [("core", False), ("encoder", True)]:
            extract = functools.partial(model_features, net, per_frame=per_frame, device=dev)
            rows = propagate_and_score("davis", labelprop_videos, extract, labelprop_resolution,
                                    model.config.patch_size, dict(device=dev),
                                    say=lambda line: None)
            row[f"jf_{name}"] = davis_summary(rows)["jf"]
    write_log({"step": step, **row})
    tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))


def save_pictures(step, example):
    try:
        plot_loss(os.path.join(out_dir, "loss.png"))
        plot_reconstruction(os.path.join(out_dir, "reconstruction.png"),
                            *[x.cpu() for x in example], step)
    except OSError as err:
        tqdm.write(f"train.py: warning: could not write the pictures in {out_dir}: {err}")


def plot_loss(path):
    """Left: training and held-out loss, copying the last source frame (dashed), the step-0 model
    (dotted). Right, with labelprop_data: J&F of core and encoder features, at step 0 dotted."""
    from matplotlib.figure import Figure  # no pyplot: straight to a file, no display needed

    rows = log_rows()
    labelprop = any("jf_core" in r for r in rows)
    fig = Figure(figsize=(11 if labelprop else 6, 4))
    axes = fig.subplots(1, 1 + labelprop, squeeze=False)[0]
    for ax, key in [(axes[0], "loss"), (axes[0], "val_loss"), (axes[-1], "jf_core"),
                    (axes[-1], "jf_encoder")]:
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            marker = "." if key != "loss" else None
            line, = ax.plot(*zip(*points, strict=True), label=key, marker=marker)
        if points and points[0][0] == 0:
            ax.axhline(points[0][1], color=line.get_color(), ls=":", label=f"{key}, step 0")
    copy_last = [r["val_loss_copy_last"] for r in rows if "val_loss_copy_last" in r]
    if copy_last:
        axes[0].axhline(copy_last[-1], color="gray", ls="--",
                        label="val_loss, copying the last source frame")
    axes[0].set(ylabel="pixel MSE", yscale="log", title=out_dir)
    for ax in axes:
        ax.set(xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_reconstruction(path, source, target, reconstruction, mask, deltas, step):
    """One clip: its source frames, the masked targets (hidden patches grey), the model's
    reconstructions and the true targets, a row each."""
    from matplotlib.figure import Figure

    P = target.shape[-1] // mask.shape[-1]  # the patch size
    hidden = mask.repeat_interleave(P, 1).repeat_interleave(P, 2)[:, None]  # [T, 1, H, W]
    rows = {"source": source, "masked target": torch.where(hidden, 0.5, target),
            "reconstruction": reconstruction.clamp(0, 1), "target": target}
    cols = max(len(source), len(target))
    fig = Figure(figsize=(2 * cols, 2 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for c in range(cols):
            axes[r, c].axis("off")
            if c < len(frames):
                axes[r, c].imshow(frames[c].permute(1, 2, 0).numpy(), interpolation="nearest")
                label = f"t={c}" if name == "source" else f"Δ={int(deltas[c])}"
                axes[r, c].set_title(f"{name}, {label}" if c == 0 else label, fontsize=8)
    fig.suptitle(f"step {step}")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def save_checkpoint(step, model, optimizer, model_config):
    """Everything needed to continue exactly: weights, optimizer, step, settings and the data
    position (data and masks are functions of these; nothing else is random). Plain tensors and
    Python values (it loads with weights_only=True), full state dicts (model.load_model reads it).
    Returns an error, or None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0's CPU
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    position = {"streams": batch_size // micro_batch, "micro_batch": micro_batch,
                "examples": step * batch_size}
    ckpt = {"model": model_state, "model_config": asdict(model_config), "optimizer": optim_state,
            "step": step, "config": settings, "data": position}
    return write_checkpoint(ckpt, ckpt_path, step)


def log_rows():
    """log.jsonl's rows (none before it exists), but a last line cut short by a crash."""
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


def finish(step, stopping, signum, loaders, progress):
    """A clean end on every rank. Without the explicit exit a gloo rank sometimes aborts at
    interpreter shutdown ("terminate called without an active exception") although training
    succeeded."""
    progress.close()
    loaders.clear()  # stops the loader workers
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    if master and stopping:
        cause = signal.Signals(int(signum)).name if signum else "the launcher ended"
        print(f"train.py: {cause} at step {step}: saved {ckpt_path}; the same command with "
              f"init_from='auto' (or 'resume') continues. Exit status {REQUEUE}.")
    elif master:
        print(f"done: {step} steps. {out_dir}/ holds ckpt.pt, log.jsonl, loss.png and "
              "reconstruction.png. Next:")
        if str(data).startswith("noise_square"):
            print(f"  python visualize.py --demo --ckpt={ckpt_path}")
        else:
            print(f"  python visualize.py --video=<a video or frame folder> --ckpt={ckpt_path}\n"
                  "  python eval_labelprop.py --task=davis --data=<DAVIS-2017 folder> "
                  f"--ckpt={ckpt_path}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(REQUEUE if stopping else 0)


if __name__ == "__main__":
    main()
