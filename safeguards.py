"""What keeps a train.py run safe, which a first reading skips: the configurator and --help;
one-line failures, all ranks together; save signals; the out_dir lock, the resume check, whole
checkpoints."""

import ast
import builtins
import contextlib
import difflib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
import types

import torch
import torch.distributed as dist

# torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without it this is the only process.
rank = int(os.environ.get("RANK", 0))
world_size = int(os.environ.get("WORLD_SIZE", 1))
local_rank = int(os.environ.get("LOCAL_RANK", 0))
distributed = world_size > 1
master = rank == 0  # rank 0 logs, plots and writes checkpoints
last_saved = None  # (path, step) of this run's newest checkpoint, named by every failure


def configure(settings, argv, choices):
    """nanoGPT's configurator, strict: config files and --key=value override `settings`, in
    order."""
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                sys.exit(f"train.py: {arg}: settings are given as --key=value")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare word: --device=cpu
            if isinstance(settings.get(key), str) and not isinstance(value, (str, list, tuple)):
                value = text  # a text setting takes the text as written: --out_dir=2024
            settings[key] = check(settings, choices, key, value, "command line")
            continue
        if not os.path.isfile(arg):  # a config file: plain Python, run with the settings so far
            sys.exit(f"train.py: config file not found: {arg}")
        namespace = dict(settings)
        try:  # (builtins': `compile` is a setting)
            exec(builtins.compile(open(arg).read(), arg, "exec"), namespace)
        except Exception as err:  # noqa: BLE001 -- a broken config file gets its name and the error
            sys.exit(f"train.py: {arg}: {type(err).__name__}: {err}")
        for key, value in namespace.items():
            code = isinstance(value, (types.ModuleType, types.FunctionType, type))
            new = key not in settings or value is not settings[key]
            if new and not code and not key.startswith("_"):
                settings[key] = check(settings, choices, key, value, arg)


def check(settings, choices, key, value, where):
    """The value of a setting as given in `where`, checked against the type of its default."""
    if key not in settings:
        close = difflib.get_close_matches(key, list(settings), n=3, cutoff=0.6)
        hint = (f"; did you mean {', '.join(close)}?" if close
                else " (python train.py --help lists them)")
        sys.exit(f"train.py: {where}: unknown setting {key!r}{hint}")
    default = settings[key]
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if key == "data":  # a spec, or a mixture [(spec, weight), ...]
        ok = isinstance(value, str) or (isinstance(value, (list, tuple)) and value and all(
            isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], str)
            and number(s[1]) for s in value))
        expected = "a string or a list of (spec, weight) pairs"
    elif isinstance(default, bool):
        ok, expected = isinstance(value, bool), "True or False"
    elif isinstance(default, float):
        ok, expected = number(value), "a number"
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    else:
        ok, expected = isinstance(value, type(default)), type(default).__name__
    if key == "save_signals" and ok and None in parse_save_signals(value):
        ok, expected = False, "a list of signals' names, such as 'SIGTERM,SIGUSR1'"
    if not ok:
        sys.exit(f"train.py: {where}: {key} must be {expected} (default {default!r}), "
                 f"got {value!r}")
    if key in choices and value not in choices[key]:
        close = difflib.get_close_matches(value, choices[key], n=1, cutoff=0.3)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        sys.exit(f"train.py: {where}: {key}={value!r} is not one of "
                 f"{', '.join(map(repr, choices[key]))}{hint}")
    return value


def print_help(doc, settings, sources):
    """Every setting, its default and the comment on its line, under the '# -- ' headings:
    assignments at the top level of each source and in its classes (model.RVMConfig)."""
    print(doc.split("\n\n")[0])
    print("\nSettings (defaults; a config file or --name=value changes them):")
    for source in sources:
        lines = source.splitlines()
        tree = ast.parse(source)
        found = {}  # line -> setting
        fields = [n for c in tree.body if isinstance(c, ast.ClassDef) for n in c.body]
        for node in tree.body + fields:
            target = getattr(node, "target", None) or getattr(node, "targets", [None])[0]
            if getattr(target, "id", None) in settings:
                found[node.lineno] = target.id, lines[node.lineno - 1][node.end_col_offset:]
        for n, line in enumerate(lines, 1):
            if line.startswith("# -- "):
                print("\n" + line[5:])
            elif n in found:
                name, comment = found[n]
                print(f"  {name} = {settings[name]!r}".ljust(36) + "  " + comment.strip(" #"))


def fail(message, all_ranks=False):
    """Stop with one line instead of a trace (RVM_TRACEBACK=1: with it). Where all ranks fail alike,
    rank 0 speaks for all and the others wait a moment: torchrun, stopping the rest when one ends,
    must not stop rank 0 before it has spoken. (os._exit: see train.py's finish.)"""
    if master or all_ranks:
        print(f"train.py: {message}" if world_size == 1 else f"train.py: rank {rank}: {message}",
              file=sys.stderr)
        if os.environ.get("RVM_TRACEBACK"):
            import traceback
            if sys.exc_info()[0]:
                traceback.print_exc()
            else:
                traceback.print_stack()
    else:
        time.sleep(2)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def stop_together(error):
    """Every rank stops if any rank met an error (rank 0 naming them all), so none is left waiting.
    (On XLA through torch_xla's host rendezvous: its process group carries XLA tensors only.)"""
    errors = [error]
    if distributed and dist.get_backend() == "xla":
        import torch_xla.core.xla_model as xm
        errors = [e.decode() for e in xm.rendezvous("stop_together", (error or "").encode())]
    elif distributed:
        errors = [None] * world_size
        dist.all_gather_object(errors, error)
    error = "; ".join(sorted({e for e in errors if e}))
    if error:
        fail(error)


def agree_to_stop(flags, due):
    """Over all ranks (on the gloo group `flags`), so that they act alike: a save signal taken,
    the launcher gone, a checkpoint due."""
    values = torch.tensor([stop["signal"], stop["launcher_gone"], due], dtype=torch.float64)
    if distributed:
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=flags)
    return values.tolist()


# A signal (save_signals) saves the run: its handler only takes note, and at the end of the step
# every rank learns whether any took one; then all save, and exit with REQUEUE. (A second signal
# changes nothing.) Loader workers ignore them: the training process saves.
REQUEUE = 99  # the exit status after saving on a signal: Grid Engine's "reschedule this job"
stop = {"signal": 0, "launcher_gone": 0}


def parse_save_signals(names):
    return [signal.Signals.__members__.get(name) for name in names.split(",") if name]


def catch_save_signals(names):
    for sig in parse_save_signals(names):
        signal.signal(sig, lambda signum, frame: stop.update(signal=signum))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun
        threading.Thread(target=watch_launcher, args=(os.getppid(),), daemon=True).start()


def ignore_save_signals(names, worker_id=None):
    for sig in parse_save_signals(names):
        signal.signal(sig, signal.SIG_IGN)


def watch_launcher(launcher):
    """torchrun's agent starts its workers in sessions of their own: killed (SIGKILL; it does not
    handle SIGUSR1), it leaves them training. A worker whose launcher is gone stops as on a signal,
    saving with the others, and exits a minute later if still alive (a peer gone with the launcher
    would hang it)."""
    while os.getppid() == launcher:
        time.sleep(0.5)
    stop["launcher_gone"] = 1
    time.sleep(60)
    os._exit(1)


# A resume continues exactly what was trained, so every setting that changes it must be the
# checkpoint's, unless allow_changes names it. The rest (where to log, how often, on what hardware;
# max_steps, which counts through lr_decay_steps, the cosine's length) may change.
OPERATIONAL = {"out_dir", "init_from", "log_interval", "eval_interval", "ckpt_interval",
               "ckpt_minutes", "device", "sharding", "compile", "peak_flops_per_device", "threads",
               "grad_checkpoint", "allow_changes", "max_steps", "num_workers", "save_signals",
               "val_data", "val_clips", "labelprop_data", "labelprop_resolution",
               "labelprop_sequences"}


def claim_out_dir(out_dir, ckpt_path, init_from):
    """An out_dir belongs to one run: rank 0 holds out_dir/lock (flock) for the run's whole life,
    and a second run stops at once, naming the holder. The kernel drops the lock of a process that
    dies: a killed run's is simply taken over. Returns how the run starts: 'scratch', 'resume' or a
    weights file (init_from='auto' decided here)."""
    global lock_file
    error = None
    if master:
        lock_file = open(os.path.join(out_dir, "lock"), "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.seek(0)
            error = (f"{out_dir} is in use by another training run ("
                     f"{lock_file.read().strip() or 'holder unknown'}): wait for it to end or "
                     "stop it, or choose another out_dir")
    stop_together(error)
    init = init_from
    if init_from == "auto":
        init = "resume" if os.path.exists(ckpt_path) else "scratch"
    if init != "resume" and os.path.exists(ckpt_path):
        fail(f"{out_dir} holds a run ({ckpt_path}); a new one would overwrite it. "
             "--init_from=resume continues it; to start afresh, choose another out_dir (or delete "
             "that checkpoint)")
    if init == "resume" and not os.path.isfile(ckpt_path):
        fail(f"init_from='resume' but {ckpt_path} does not exist (set out_dir to the run to "
             "continue)")
    if master:  # out_dir is this run's now: say whose, and clear what a crash left half-written
        lock_file.truncate(0)
        lock_file.write(f"train.py, pid {os.getpid()} on {socket.gethostname()}, "
                        f"since {time.strftime('%Y-%m-%d %H:%M')}")
        lock_file.flush()
        with contextlib.suppress(FileNotFoundError):
            os.remove(ckpt_path + ".tmp")
    return init


def read_checkpoint(ckpt_path, settings):
    """A resume's checkpoint, and the settings it changes (allow_changes must name them)."""
    global last_saved
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        assert {"model", "optimizer", "step", "config", "data"} <= set(ckpt)
    except Exception:  # noqa: BLE001 -- empty, truncated, or not ours: one message
        fail(f"{ckpt_path} ({os.path.getsize(ckpt_path)} bytes) is not a readable train.py "
             "checkpoint: empty, damaged, or another kind of file. Restore it, or start afresh in "
             "another out_dir")
    # As JSON, so that (1,) == [1].
    before, now = ({**{k: json.dumps(v) for k, v in c.items() if k not in OPERATIONAL},
                    "lr_decay_steps": str(c.get("lr_decay_steps") or c.get("max_steps"))}
                   for c in (ckpt["config"], settings))
    changed = {k: [before.get(k), now[k]] for k in now if before.get(k) != now[k]}
    allowed = set(settings["allow_changes"].split(","))
    if "max_steps" in allowed:
        allowed.add("lr_decay_steps")
    refused = sorted(set(changed) - allowed)
    if refused:
        fail(f"{ckpt_path} was trained with other settings: "
             + ", ".join(f"{k} {changed[k][0]} -> {changed[k][1]}" for k in refused)
             + " (lr_decay_steps follows max_steps when it is 0). To continue exactly, use the "
             "checkpoint's settings; to change them, name them: "
             f"--allow_changes={','.join(refused)}")
    last_saved = (ckpt_path, ckpt["step"])
    if ckpt["step"] >= settings["max_steps"]:
        print(f"train.py: {ckpt_path} is at step {ckpt['step']}, "
              f"max_steps={settings['max_steps']}: nothing to do")
        os._exit(0)
    return ckpt, changed


def write_checkpoint(ckpt, ckpt_path, step):
    """Rank 0 writes to a temporary file, then renames it: a crash while writing leaves the
    previous checkpoint as it was. Returns an error message, or None."""
    global last_saved
    if master:
        try:
            with open(ckpt_path + ".tmp", "wb") as f:
                torch.save(ckpt, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(ckpt_path + ".tmp", ckpt_path)
        except (OSError, RuntimeError) as err:  # a full disk, say: the last good one stays
            with contextlib.suppress(OSError):
                os.remove(ckpt_path + ".tmp")
            return (f"could not write {ckpt_path} at step {step} ({str(err).splitlines()[0]}); "
                    f"is the disk full? Make room. {kept()}")
    last_saved = (ckpt_path, step)
    return None


def kept():
    if last_saved is None:
        return "No checkpoint was written."
    return (f"The last checkpoint, {last_saved[0]} (step {last_saved[1]}), is kept: continue "
            "with --init_from=resume.")
