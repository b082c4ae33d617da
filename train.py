"""Train RVM (Recurrent Video Masked Autoencoders, Zoran et al.) with the paper's recipe (§4.1, SPEC §3).

    python train.py                                                    # a laptop: the white-noise square demo
                                                                       # (no arguments = configs/noise_square.py)
    python train.py configs/s.py --micro_batch=16 --max_steps=1000     # one GPU (or CPU), overrides last
    torchrun --standalone --nproc_per_node=8 train.py configs/b.py     # one node, 8 GPUs
    torchrun --nnodes=4 --node_rank=R --nproc_per_node=8 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:29500 --rdzv_id=rvm train.py configs/l.py # many nodes (out_dir on a shared disk)

Writes to out_dir: ckpt.pt (every ckpt_interval steps and at the end), log.jsonl (a line per logged
step), loss.png and reconstruction.png (every eval_interval steps).

Settings: the defaults below, then each config file (plain Python, exec'd), then --key=value
(Python literals; bare words are strings), in that order. An unknown key or a value of the wrong
type stops before anything starts. Every field of model.RVMConfig is a setting of the same name.

How the global batch is split (world size W, grad accumulation A):
    batch_size (global) = W * A * micro_batch
The data is batch_size / micro_batch "slots": independent example streams, slot i being
ClipDataset(rank=i). Rank r owns slots r*A .. r*A+A-1 and feeds slot r*A+m to its m-th micro-batch.
The mask of every micro-batch is drawn from (seed, step, slot). So what a step sees does not depend
on W: 1 process with A=2 and 2 processes with A=1 train on the same examples with the same masks,
and a run can resume on another number of GPUs and continue the same data.
"""

import builtins
import contextlib
import copy
import difflib
import json
import math
import os
import signal
import sys
import time
import types
from ast import literal_eval
from dataclasses import asdict, fields

import numpy as np
import torch
import torch.distributed as dist

from model import RVM, RVMConfig, load_model, load_official

# -----------------------------------------------------------------------------------------------
# Settings. Defaults: RVM-S with the paper's recipe (§4.1). configs/*.py change them.
# I/O
out_dir = "out"
init_from = "scratch"  # 'scratch' | 'resume' (out_dir/ckpt.pt) | a path: authors' .npz or our .pt (weights only)
log_interval = 10  # steps between tqdm postfix updates and out_dir/log.jsonl lines
eval_interval = 1000  # steps between out_dir/loss.png and out_dir/reconstruction.png
ckpt_interval = 1000  # steps between checkpoints (out_dir/ckpt.pt); one is always written at the end
# data (SPEC §2; supplement §7): 64-frame windows, 4 source frames, 4 targets 4..48 frames later
data = "data/videos"  # a folder of videos or frame folders, 'noise_square', or [(spec, weight), ...] (Table 4)
image_size = 256  # frames are RandomResizedCropped to image_size x image_size (§4.1)
n_source = 4
n_target = 4
gap_min = 4  # target frames are gap_min..gap_max frames after the last source frame
gap_max = 48
window = 64  # frames per training clip
per_frame_crop = False  # SPEC §2: one crop box per clip (coherent motion) unless True
num_workers = 8  # DataLoader worker processes per rank, shared among the rank's slots
# optimisation (§4.1; the paper publishes no lr: MAE/SiamMAE's linear scaling rule, SPEC §3)
batch_size = 2048  # global batch: examples per optimizer step, over all ranks and micro-batches
micro_batch = 64  # examples per forward/backward on one device; lower it on out-of-memory
max_steps = 1_000_000  # the paper: 1M steps at batch 2048, about 2B clips
base_lr = 1.5e-4  # peak lr = base_lr * batch_size / 256
learning_rate = 0.0  # > 0: this peak lr instead of the scaling rule
min_lr = 0.0  # the cosine decays to this (MAE decays to 0)
warmup_steps = 10_000  # linear warm-up (§4.1 "warm-up phase"; its length is ours: 1% of 1M)
lr_decay_steps = 0  # 0 -> max_steps: the cosine reaches min_lr at the last step
weight_decay = 0.05  # on weight matrices only: none on biases, norms, CLS/MASK tokens
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip the global gradient norm; 0 -> no clipping
# system
device = "auto"  # 'auto' (cuda if there is one, else cpu) | 'cuda' | 'cpu' | 'xla' (needs torch_xla)
dtype = "bfloat16"  # 'bfloat16': autocast forward and backward, float32 weights (§4.1) | 'float32'
sharding = "fsdp"  # with several processes: 'fsdp' (FSDP2 per block, the paper's sharding) | 'ddp' | 'none'
compile = False  # torch.compile the model
peak_flops = 0.0  # per device, for MFU; 0 -> a datasheet bf16 peak on CUDA, a measured matmul rate on CPU
threads = 0  # torch CPU threads per process; 0 -> torch's default (one per core). Tiny models run faster on 1
seed = 0
# debugging (the tests use these)
debug_nan_step = 0  # > 0: rank 0's loss becomes NaN at this step
debug_crash_step = 0  # > 0: the process kills itself (SIGKILL) at this step ...
debug_crash_in = "step"  # ... after the step ('step') or halfway through writing its checkpoint ('save')
# model: the fields of model.RVMConfig, same names and defaults (RVM-S, Table 5; configs/{s,b,l,h}.py)
patch_size = 16
width = 384  # encoder width = core width
enc_layers = 12
enc_heads = 6
enc_mlp = 0  # 0 -> 4 * width
core_layers = 4
core_heads = 8
core_mlp = 0  # 0 -> 4 * width
dec_width = 512  # decoder: the same for all sizes (Table 6)
dec_layers = 8
dec_heads = 16
dec_mlp = 0  # 0 -> 4 * dec_width
mask_ratio = 0.95  # of each target frame's patches (§3.1)
n_deltas = 64  # target time gaps are one-hot over [0, n_deltas)
base_grid = 16
aggregator = "rnn"  # 'rnn' (RVM) | 'attn' (the §9 baseline, Table 3b)
decoder_memory = "all"  # the decoder reads 'all' source features (the paper) | 'last' (the noise-square demo)
grad_checkpoint = False  # activation checkpointing: recompute each block in the backward pass
model_keys = [f.name for f in fields(RVMConfig)]
for _f in fields(RVMConfig):  # a field added to model.py later is a setting too
    globals().setdefault(_f.name, _f.default)
# -----------------------------------------------------------------------------------------------

CHOICES = dict(device=("auto", "cuda", "cpu", "xla"), dtype=("bfloat16", "float32"),
               sharding=("fsdp", "ddp", "none"), aggregator=("rnn", "attn"),
               decoder_memory=("all", "last"), debug_crash_in=("step", "save"))


def configure(settings, argv):
    """nanoGPT's configurator, strict: config files and --key=value override `settings` in order.
    A name that is not a setting, or a value of another type, ends the program with a message."""
    def check(key, value, where):
        if key not in settings:
            close = difflib.get_close_matches(key, list(settings), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; the settings are: {', '.join(settings)}"
            sys.exit(f"train.py: {where}: unknown setting {key!r}{hint}")
        default = settings[key]
        if key == "data":  # a spec, or a mixture [(spec, weight), ...]
            ok = isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) > 0 and all(
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

    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                sys.exit(f"train.py: {arg}: overrides are written --key=value")
            try:
                value = literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare word: --device=cpu
            if isinstance(settings.get(key), str) and not isinstance(value, (str, list, tuple)):
                value = text  # a text setting takes the text as written: --out_dir=2024
            settings[key] = check(key, value, "command line")
        else:  # a config file: plain Python run in a namespace that starts with the current settings
            if not os.path.isfile(arg):
                sys.exit(f"train.py: config file not found: {arg}")
            namespace = dict(settings)
            try:
                exec(builtins.compile(open(arg).read(), arg, "exec"), namespace)  # `compile` is a setting here
            except Exception as err:  # noqa: BLE001 -- any error in a config file gets its name and line
                sys.exit(f"train.py: {arg}: {type(err).__name__}: {err}")
            for key, value in namespace.items():
                if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
                    continue  # helpers and imports of the config file itself
                if key not in settings or value is not settings[key]:
                    settings[key] = check(key, value, arg)
    return settings


config_keys = [k for k, v in globals().items()
               if not k.startswith("_") and k != "model_keys" and isinstance(v, (bool, int, float, str, list, tuple))]
argv = sys.argv[1:]
if not argv:  # no arguments at all: the built-in default is the laptop demo
    argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "noise_square.py")] + argv
    print(f"train.py: no arguments, so the built-in default: the white-noise square demo ({argv[0]})")
config = configure({k: globals()[k] for k in config_keys}, argv)
globals().update(config)

# -----------------------------------------------------------------------------------------------
# Setup: processes, device, data, model, optimizer.

# torchrun sets RANK/WORLD_SIZE/LOCAL_RANK (one node or many); without it this is the only process.
rank = int(os.environ.get("RANK", 0))
world_size = int(os.environ.get("WORLD_SIZE", 1))
local_rank = int(os.environ.get("LOCAL_RANK", 0))
distributed = world_size > 1
master = rank == 0  # rank 0 logs, plots and writes checkpoints


def fail(message, all_ranks=False):
    """Stop with a message instead of a deep trace. Where all ranks fail alike rank 0 speaks for
    them. os._exit skips the interpreter teardown that can abort gloo (see the end); under torchrun
    the other ranks are stopped by torchrun."""
    if master or all_ranks:
        print(f"train.py: {message}" if world_size == 1 else f"train.py: rank {rank}: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


# Sanity checks, all before a process group or a model exists.
if micro_batch < 1 or batch_size % (micro_batch * world_size):
    fail(f"batch_size={batch_size} must be a positive multiple of micro_batch * world_size = "
         f"{micro_batch} * {world_size}")
grad_accum = batch_size // (micro_batch * world_size)  # micro-batches per rank per step
n_slots = batch_size // micro_batch
if image_size % patch_size:
    fail(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
if n_source - 1 + gap_max >= n_deltas:
    fail(f"n_source - 1 + gap_max = {n_source - 1 + gap_max} must be < n_deltas={n_deltas}: the decoder one-hot "
         "encodes each target's frame offset from the first source frame")
if max_steps < 1 or warmup_steps < 0 or log_interval < 1 or eval_interval < 1 or ckpt_interval < 0:
    fail("max_steps, log_interval and eval_interval must be >= 1; warmup_steps and ckpt_interval >= 0")
try:
    model_config = RVMConfig(**{k: config[k] for k in model_keys})
except (ValueError, TypeError) as err:
    fail(f"model settings: {err}")
if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
if device == "cuda" and not torch.cuda.is_available():
    fail("device='cuda' but torch sees no CUDA GPU (use --device=cpu, or install the CUDA build of torch)")
if device == "xla":
    try:
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.distributed.xla_backend  # noqa: F401 -- registers the 'xla' process-group backend
    except ImportError:
        fail("device='xla' needs torch_xla, which is not installed (https://github.com/pytorch/xla)")
    if sharding == "fsdp" and distributed:
        fail("sharding='fsdp' (FSDP2) does not run on XLA; use --sharding=ddp")
ckpt_path = os.path.join(out_dir, "ckpt.pt")
try:
    os.makedirs(out_dir, exist_ok=True)
except OSError as err:
    fail(f"out_dir={out_dir!r}: cannot create it ({err})")
if init_from == "resume" and not os.path.isfile(ckpt_path):
    fail(f"init_from='resume' but {ckpt_path} does not exist (set out_dir to the run to continue)")
if init_from not in ("scratch", "resume") and not os.path.isfile(init_from):
    fail(f"init_from={init_from!r}: no such file (expected 'scratch', 'resume' or a .npz/.pt checkpoint)")

if threads:
    torch.set_num_threads(threads)  # small matrices: thread start-up costs more than it saves

# One device per process: cuda:LOCAL_RANK on a GPU node, the CPU (gloo) on a laptop or in CI.
if device == "cuda":
    dev = torch.device("cuda", local_rank)
    torch.cuda.set_device(dev)
    backend = "nccl"
elif device == "xla":
    dev = torch_xla.device() if hasattr(torch_xla, "device") else xm.xla_device()
    backend = "xla"
else:
    dev = torch.device("cpu")
    backend = "gloo"
if distributed:
    if backend == "xla":
        dist.init_process_group("xla", init_method="xla://")
    else:
        dist.init_process_group(backend, device_id=dev if backend == "nccl" else None)
if not distributed:
    sharding = "none"  # one process: nothing to shard or synchronise

# Resuming: read the checkpoint first, to know where the data stops and to refuse a wrong model.
start_step, ckpt = 0, None
if init_from == "resume":
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable file gets the same clear message
        fail(f"{ckpt_path}: not a readable checkpoint ({type(err).__name__}: {err})")
    differ = {k: (v, getattr(model_config, k)) for k, v in ckpt["model_config"].items()
              if k != "grad_checkpoint" and getattr(model_config, k, None) != v}
    if differ:
        fail(f"{ckpt_path} holds another model; settings that differ (checkpoint vs now): "
             + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in differ.items())
             + ". Use the checkpoint's settings, or another out_dir to start afresh.")
    start_step = ckpt["step"]

# Data: this rank's slots, each its own stream (see the top of this file), started where the
# checkpoint left it. uint8 frames travel to the device and become floats in [0, 1] there.
from data import ClipDataset, make_loader  # noqa: E402 -- after the checks, so a bad setting fails fast

examples_per_slot = start_step * micro_batch
if ckpt is not None and (ckpt["data"]["micro_batch"], ckpt["data"]["slots"]) != (micro_batch, n_slots):
    examples_per_slot = ckpt["data"]["examples"] // n_slots
    if master:
        print(f"train.py: warning: the checkpoint's data was split into {ckpt['data']['slots']} slots of "
              f"{ckpt['data']['micro_batch']}, now {n_slots} of {micro_batch}: the data continues, but not "
              "as an uninterrupted run would have", file=sys.stderr)
slots = range(rank * grad_accum, (rank + 1) * grad_accum)
workers_per_slot = math.ceil(num_workers / grad_accum)
if distributed and local_rank != 0:
    dist.barrier()  # let local rank 0 list the folders first: data.py caches what it finds
try:
    stream = ClipDataset(data, image_size=image_size, n_source=n_source, n_target=n_target, gap_min=gap_min,
                         gap_max=gap_max, window=window, per_frame_crop=per_frame_crop, seed=seed, rank=slots[0],
                         start=examples_per_slot)
except (ValueError, OSError, AssertionError) as err:
    fail(f"data={data!r}: {err} (set data in the config file, or --data=/path/to/videos)", all_ranks=True)
if distributed and local_rank == 0:
    dist.barrier()


def slot_stream(slot):
    """The stream of examples (seed, slot, k): the same sources, listed once, another rank id."""
    dataset = copy.copy(stream)
    dataset.rank = slot
    return dataset


loaders = [iter(make_loader(slot_stream(slot), micro_batch, num_workers=workers_per_slot)) for slot in slots]


skipped_draws = 0


def next_batch(m):
    """The next micro-batch of this rank's m-th slot, on the device: floats in [0, 1]."""
    try:
        batch = next(loaders[m])
    except StopIteration:
        fail(f"data={data!r}: the stream of slot {slots[m]} ended")
    except Exception as err:  # noqa: BLE001 -- a worker's error arrives wrapped in its traceback: keep the message
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        fail(f"data error in slot {slots[m]}: {lines[-1] if lines else repr(err)}", all_ranks=True)
    global skipped_draws  # unreadable or too-short videos data.py passed over to make this batch
    skipped_draws += int(batch["skipped"].sum()) if "skipped" in batch else 0
    source, target = (batch[k].to(dev, non_blocking=True).float() / 255 for k in ("source", "target"))
    return source, target, batch["deltas"].to(dev, non_blocking=True)


n_tokens = (image_size // patch_size) ** 2


def mask_permutation(step, slot):
    """Which target tokens stay visible (model.forward's mask_perm): a fresh shuffle per example and
    target frame, drawn from (seed, step, slot) so that it survives resuming and re-sharding."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, slot]).generate_state(1)[0]))
    return torch.rand(micro_batch, n_target, n_tokens, generator=g).argsort(dim=-1).to(dev, non_blocking=True)


# Model: from scratch, or the authors' weights (.npz) / our .pt as a starting point. Seeded here,
# after the loaders (each iter(DataLoader) draws a seed), so that every rank and every world size
# builds the same initial model (FSDP shards it; DDP would broadcast rank 0's anyway). Nothing in the loop draws from
# the global generators: data and masks are pure functions of (seed, slot, ...).
torch.manual_seed(seed)
np.random.seed(seed)
if init_from in ("scratch", "resume"):
    model = RVM(model_config)
else:
    try:
        overrides = dict(mask_ratio=mask_ratio, grad_checkpoint=grad_checkpoint, decoder_memory=decoder_memory)
        if init_from.endswith(".npz"):
            model = load_official(init_from, base_grid=base_grid, aggregator=aggregator, **overrides)
        else:
            model = load_model(init_from, **overrides)
    except (ValueError, FileNotFoundError) as err:
        fail(f"init_from: {err}")
    differ = {k: (v, getattr(model_config, k)) for k, v in asdict(model.config).items()
              if getattr(model_config, k) != v}
    if differ:
        fail(f"init_from={init_from!r} holds another model; settings that differ (file vs now): "
             + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in differ.items()))
    model.train()
flops_per_example = model.flops_per_example(image_size, n_source, n_target)
n_params = model.num_params("all")
model.to(dev)
raw_model = model  # the module whose parameters the optimizer holds and the checkpoints name

# Sharding (§4.1 "FSDP-like parameter and optimizer sharding", SPEC §3). FSDP2 shards each
# transformer block and then the root: each block's weights are gathered just before it runs.
# With bf16 they are gathered in bf16 and the gradients reduced in float32; the sharded master
# weights stay float32. Inputs are not cast (the loss compares with exact float32 targets);
# autocast below decides the precision of each op, as without FSDP.
if sharding == "fsdp":
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dev.type, (world_size,))
    mp_policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                      cast_forward_inputs=False) if dtype == "bfloat16" else MixedPrecisionPolicy())
    blocks = list(model.encoder.layers) + list(model.decoder.xa_blocks)
    if aggregator == "rnn":
        blocks += list(model.rnn_core.transformer.xa_blocks)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)
if compile:
    model = torch.compile(model)
if sharding == "ddp":
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(model, device_ids=[local_rank] if device == "cuda" else None)
autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

# AdamW (§4.1) with decoupled weight decay on weight matrices (linear and conv kernels) only.
decay, no_decay = [], []
for name, p in raw_model.named_parameters():
    (decay if p.ndim >= 2 and name not in ("cls_token", "mask_token") else no_decay).append(p)
optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=0.0, betas=(beta1, beta2))

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict  # noqa: E402

if ckpt is not None:  # full (unsharded) state dicts in the file; set_state_dict shards them again
    set_state_dict(raw_model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    rng = ckpt["rng"][rank] if len(ckpt["rng"]) == world_size else ckpt["rng"][0]
    torch.set_rng_state(rng["torch"])
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
    if device == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    del ckpt  # the mmap'd file is no longer needed

peak_lr = learning_rate or base_lr * batch_size / 256  # MAE's linear scaling rule (SPEC §3)
decay_steps = lr_decay_steps or max_steps


def get_lr(step):
    """The lr of optimizer step `step` + 1 (§4.1): a linear warm-up that reaches peak_lr at step
    warmup_steps, then a cosine decay that reaches min_lr at step decay_steps, then min_lr."""
    s = step + 1
    if s <= warmup_steps:
        return peak_lr * s / warmup_steps
    progress = min(1.0, (s - warmup_steps) / max(1, decay_steps - warmup_steps))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


# MFU = achieved FLOP/s per device / peak_flops. Default peak: the datasheet's dense bf16 rate on
# CUDA (an H100's 989e12 unless the card is known to be another); on a CPU, what a dense matmul
# in the training dtype reaches here, measured once now; unknown (MFU 'n/a') on XLA.
if not peak_flops and master:
    if device == "cuda":
        name = torch.cuda.get_device_name(dev)
        peak_flops = next((v for k, v in {"A100": 312e12, "H100": 989e12, "H200": 989e12}.items() if k in name), 989e12)
    elif device == "cpu":
        mm_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        a = b = torch.full((1024, 1024), 0.5, dtype=mm_dtype)  # (not randn: leave the RNG state alone)
        for _ in range(8):  # the best of 8 tries (about 0.3 s): other processes may share the cores
            t0 = time.perf_counter()
            a @ b
            peak_flops = max(peak_flops, 2 * 1024**3 / (time.perf_counter() - t0))


def save_checkpoint(step):
    """Everything needed to continue exactly: weights, optimizer, step, settings, RNG states and the
    data position. Plain tensors and Python values, so it loads with weights_only=True; the model
    part is a full state dict, so model.load_model reads it. Written to a temporary file and then
    renamed: a crash while writing leaves the previous checkpoint as it was."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0's CPU
    model_state, optim_state = get_state_dict(raw_model, optimizer, options=options)
    np_state = np.random.get_state()
    rng = {"torch": torch.get_rng_state(),
           "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if device == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(dev)
    rngs = [None] * world_size
    if distributed:
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if not master:
        return
    ckpt = {"model": model_state, "model_config": asdict(model_config), "optimizer": optim_state,
            "step": step, "config": config, "rng": rngs, "world_size": world_size,
            "data": {"slots": n_slots, "micro_batch": micro_batch, "examples_per_slot": step * micro_batch,
                     "examples_per_rank": step * micro_batch * grad_accum, "examples": step * batch_size}}
    tmp = ckpt_path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    if debug_crash_in == "save" and step == debug_crash_step:  # a crash halfway through writing
        os.truncate(tmp, os.path.getsize(tmp) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(tmp, ckpt_path)


def plot_loss(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path) as f:
        rows = [json.loads(line) for line in f]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="loss (pixel MSE)", yscale="log", title=f"{out_dir}: training loss")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_reconstruction(path, source, target, reconstruction, mask, deltas, step):
    """One clip: its source frames, the masked targets (hidden patches grey), the model's
    reconstructions and the true targets, one row each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hidden = mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, None]  # [T, 1, H, W]
    rows = {"source": source, "masked target": torch.where(hidden, 0.5, target),
            "reconstruction": reconstruction.clamp(0, 1), "target": target}
    cols = max(len(source), len(target))
    fig, axes = plt.subplots(len(rows), cols, figsize=(2 * cols, 2 * len(rows)), squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for c in range(cols):
            axes[r, c].axis("off")
            if c < len(frames):
                axes[r, c].imshow(frames[c].permute(1, 2, 0).numpy(), interpolation="nearest")
                label = f"t={c}" if name == "source" else f"Δ={int(deltas[c])}"
                axes[r, c].set_title(f"{name}, {label}" if c == 0 else label, fontsize=8)
    fig.suptitle(f"step {step}")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# Logs: a tqdm bar and out_dir/log.jsonl on rank 0. Resuming drops lines after the checkpoint.
log_path = os.path.join(out_dir, "log.jsonl")
if master:
    if init_from == "resume" and os.path.exists(log_path):
        with open(log_path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
        with open(log_path, "w") as f:
            f.writelines(kept)
    else:
        if os.path.exists(ckpt_path):
            print(f"train.py: warning: {ckpt_path} exists and will be overwritten by this new run "
                  "(--init_from=resume continues it)", file=sys.stderr)
        open(log_path, "w").close()
    print(f"RVM {n_params / 1e6:.1f}M parameters, {flops_per_example / 1e9:.2f} GFLOPs per example | "
          f"device {dev}, {dtype}, sharding {sharding}, {world_size} process(es) | global batch {batch_size} = "
          f"{world_size} x {grad_accum} micro-batches x {micro_batch} | peak lr {peak_lr:.3g} | "
          f"steps {start_step}..{max_steps}", flush=True)

# -----------------------------------------------------------------------------------------------
# The loop: one optimizer step per global batch.
from tqdm import tqdm  # noqa: E402

progress = tqdm(total=max_steps, initial=start_step, disable=not master, dynamic_ncols=True, unit="step")
step = start_step
losses, t_log, step_log = [], time.perf_counter(), start_step
while step < max_steps:
    lr = get_lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    plotting = master and ((step + 1) % eval_interval == 0 or step + 1 == max_steps)
    loss_sum = torch.zeros((), device=dev)
    for m in range(grad_accum):
        source, target, deltas = next_batch(m)
        # DDP: all-reduce the gradients only with the last micro-batch. FSDP2 reduce-scatters after
        # each one, which keeps only a shard of the gradients in memory.
        no_sync = sharding == "ddp" and m < grad_accum - 1
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast:
                loss, reconstruction, mask = model(source, target, deltas, mask_perm=mask_permutation(step, slots[m]))
            if step + 1 == debug_nan_step and master:
                loss = loss * float("nan")
            (loss / grad_accum).backward()
        loss_sum += loss.detach()
        if plotting and m == 0:
            example = [x[0].detach().cpu() for x in (source, target, reconstruction.float(), mask, deltas)]
    grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
        grad_norm = grad_norm.full_tensor()
    if distributed:  # every rank sees the same mean loss: they all stop together on a NaN
        dist.all_reduce(loss_sum)
    loss_value, grad_norm = loss_sum.item() / grad_accum / world_size, grad_norm.item()
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        fail(f"step {step + 1}: loss {loss_value}, gradient norm {grad_norm}: not finite, stopping before the "
             f"update. The last good checkpoint is {ckpt_path}"
             + ("" if os.path.exists(ckpt_path) else " (none written yet)")
             + "; lower the learning rate or check the data, then --init_from=resume.")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "xla":
        xm.mark_step()  # run the step's graph now
    step += 1
    progress.update(1)
    losses.append(loss_value)

    if master and (step % log_interval == 0 or step == max_steps):
        elapsed, t_log = time.perf_counter() - t_log, time.perf_counter()
        examples_per_s = (step - step_log) * batch_size / elapsed
        mfu = flops_per_example * examples_per_s / world_size / peak_flops if peak_flops else None
        row = {"step": step, "loss": sum(losses) / len(losses), "lr": lr, "grad_norm": grad_norm,
               "examples": step * batch_size, "examples_per_s": examples_per_s, "mfu": mfu,
               "skipped_videos": skipped_draws}  # this rank's running count since (re)start
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", ex_s=f"{examples_per_s:.1f}",
                             mfu="n/a" if mfu is None else f"{100 * mfu:.1f}%")
        losses, step_log = [], step
    t_pause = time.perf_counter()
    if plotting:
        plot_loss(os.path.join(out_dir, "loss.png"))
        plot_reconstruction(os.path.join(out_dir, "reconstruction.png"), *example, step)
    if (ckpt_interval and step % ckpt_interval == 0) or step == max_steps:
        save_checkpoint(step)
    t_log += time.perf_counter() - t_pause  # examples/s and MFU count training time only
    if step == debug_crash_step and debug_crash_in == "step":
        os.kill(os.getpid(), signal.SIGKILL)

# A clean end on every rank. Without the explicit exit a gloo rank sometimes aborts at interpreter
# shutdown ("terminate called without an active exception") although training succeeded.
progress.close()
loaders.clear()  # stops DataLoader workers
if distributed:
    dist.barrier()
    dist.destroy_process_group()
if master:
    print(f"done: {step} steps, checkpoint {ckpt_path}")
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
