"""train.py end to end: each test runs it as a subprocess (one process, or torchrun on CPU/gloo)
on a tiny model and the white-noise square data, with out_dir in tmp_path; a run that stops at its
settings runs in a fork of the test process instead (run_forked), which saves an interpreter's
start.

Equalities tested: 2 processes (DDP, FSDP2; also 2 simulated nodes) train exactly like 1 process
on the same global batch (train.py's data "streams", see its docstring); a run killed from outside
and resumed gives the losses of an uninterrupted one (bitwise on one process). Faults come from
outside the trainer: SIGKILL once a checkpoint exists, a learning rate that diverges.
"""

import importlib.util
import json
import os
import random
import re
import resource
import runpy
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import REFERENCE, ROOT
from model import RVMConfig, load_model, load_official

TIMEOUT = 180  # seconds for one launch; nothing may hang CI
# 4 examples a step in micro-batches of 1: one process accumulates 4, each of two processes 2.
TINY = dict(data="noise_square", image_size=32, patch_size=8, width=32, enc_layers=1, enc_heads=2,
            core_layers=1, core_heads=2, dec_width=32, dec_layers=1, dec_heads=2, mask_ratio=0.75,
            batch_size=4, micro_batch=1, max_steps=20, lr_decay_steps=20, warmup_steps=3,
            learning_rate=1e-3, log_interval=1, eval_interval=1000, ckpt_interval=10, num_workers=0,
            dtype="float32")


def train_args(out_dir, *config_files, **settings):
    """train.py's arguments: config files, then TINY updated by `settings` (None drops a key)."""
    settings = {**TINY, "out_dir": str(out_dir), **settings}
    overrides = [f"--{k}={v}" for k, v in settings.items() if v is not None]
    return [str(ROOT / "train.py"), *map(str, config_files)] + overrides


def launcher(nproc):
    """python, or torchrun with `nproc` processes on this machine."""
    if nproc == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}"]


def launch(out_dir, *config_files, nproc=1, **settings):
    """Run train.py on one process, or `nproc` under torchrun; returns (returncode, stdout +
    stderr)."""
    return run(launcher(nproc) + train_args(out_dir, *config_files, **settings))


def start(cmd):
    # One thread per process: the CI machine has 2 cores, and spinning OpenMP threads of several
    # processes slow each other down by 10x.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # start_new_session: its own process group, so that a kill ends torchrun's children too
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run(cmd):
    proc = start(cmd)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT} s: {' '.join(cmd)}\n{out[-3000:]}")
    return proc.returncode, out


def run_forked(args, timeout=60):
    """`python train.py args` for a run that stops at its settings, before it builds a model, in a
    fork of this process: torch is imported already, so each costs milliseconds instead of an
    interpreter's start. (Torch's thread pools do not survive a fork: a child that computes may
    hang, hence the timeout.)"""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: train.py as the command line runs it, its output into the pipe
        code = 1
        try:
            torch.set_num_threads(1)  # as DataLoader workers do after their fork
            os.dup2(write, 1)
            os.dup2(write, 2)
            sys.stdout = sys.stderr = open(write, "w", closefd=False)
            os.chdir(ROOT)
            sys.argv = ["train.py", *args]
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
            code = 0
        except SystemExit as stop:  # sys.exit("message") prints the message and exits with 1
            code = stop.code
            if not (isinstance(stop.code, int) or stop.code is None):
                print(stop.code)
                code = 1
        except BaseException:  # noqa: BLE001 -- a trace is what the test looks for
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code or 0)
    os.close(write)
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        ready = select.select([read], [], [], max(0, deadline - time.monotonic()))[0]
        chunk = os.read(read, 1 << 16) if ready else None  # None: timed out; b"": the child is done
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    if chunk is None:
        os.kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    assert chunk is not None, f"timed out after {timeout} s: train.py {' '.join(args)}"
    return code, b"".join(chunks).decode()


def succeed(out_dir, *args, **kw):
    code, out = launch(out_dir, *args, **kw)
    assert code == 0, out[-3000:]
    assert "terminate called" not in out, out[-3000:]
    return out


def log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(out_dir):
    return [row["loss"] for row in log(out_dir) if "loss" in row]


def evaluations(out_dir):
    return [row for row in log(out_dir) if "val_loss" in row or "jf_core" in row]


def kill_after(out_dir, n_steps, *config_files, nproc=1, **settings):
    """Start a run and SIGKILL it (every process of it) from outside once its log has n_steps
    lines."""
    proc = start(launcher(nproc) + train_args(out_dir, *config_files, **settings))
    wait_for_steps(proc, out_dir, n_steps)
    # torchrun and its group; its workers live in sessions of their own, and stop by themselves
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not alive_after(out_dir, 10), "a worker outlived its launcher"


def processes(out_dir):
    """The pids of the live processes training into out_dir (launcher, workers, loader workers)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if f"--out_dir={out_dir}\0" in cmd and not zombie:
            alive.append(int(pid))
    return alive


def alive_after(out_dir, seconds):
    """Whether a process training into out_dir is still alive after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not processes(out_dir):
            return False
        time.sleep(0.1)
    return True


def wait_for_steps(proc, out_dir, n_steps, checkpoint=False):
    """Wait until the run's log has n_steps lines (and, with `checkpoint`, a checkpoint exists)."""
    deadline = time.monotonic() + TIMEOUT
    while not (os.path.exists(os.path.join(out_dir, "log.jsonl")) and len(log(out_dir)) >= n_steps
               and (not checkpoint or os.path.exists(os.path.join(out_dir, "ckpt.pt")))):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.02)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--lerning_rate=1e-3"], ["unknown setting 'lerning_rate'", "learning_rate"]),
    (["--max_steps=ten"], ["max_steps must be an integer", "'ten'"]),
    (["--grad_checkpoint=1"], ["grad_checkpoint must be True or False"]),
    (["--dtype=bf16"], ["dtype='bf16' is not one of", "did you mean 'bfloat16'"]),
    (["CONFIG"], ["bad.py: unknown setting 'widht'", "width"]),
])
def test_configurator_rejects_bad_settings(tmp_path, args, expected):
    (tmp_path / "bad.py").write_text("import math\nwidht = 64  # a typo\n_private = math.pi\n")
    args = [str(tmp_path / "bad.py") if a == "CONFIG" else a for a in args]
    code, out = run_forked([*args, f"--out_dir={tmp_path / 'out'}"])
    assert code != 0
    for text in expected:
        assert text in out, out
    assert "Traceback" not in out, out
    assert not (tmp_path / "out").exists()  # stopped before anything started


def test_help_lists_every_setting_with_its_default_and_meaning():
    code, out = run_forked(["--help"])
    assert code == 0, out
    listed = {line.split()[0]: line.split(" = ", 1)[1]
              for line in out.splitlines() if line.startswith("  ")}
    names = ["out_dir", "data", "batch_size", "learning_rate", "seed"]
    for name in names + list(RVMConfig.__annotations__):
        assert name in listed, name
        meaning = listed[name]
        assert len(meaning.split()) >= 3, f"{name}: a default and a meaning, got {meaning!r}"
    assert "learning_rate = 0.0" in out and "patch_size = 16" in out and "model:" in out


def test_pointless_settings_are_named_before_any_work(tmp_path):
    code, out = launch(tmp_path, max_steps=1, warmup_steps=10, learning_rate=None, base_lr=1e-8,
                       patch_size=1, image_size=66, n_source=1, n_target=1, batch_size=1)
    assert "warmup_steps=10 >= max_steps=1" in out and "peak learning rate is 3.9e-11" in out, out
    assert "4356 tokens per frame" in out, out
    assert out.index("warning") < out.index("RVM "), "named before the run starts"


@pytest.mark.parametrize("args, expected", [
    (["--device=xla"], "needs torch_xla"),
    (["--data=/no/such/folder"], "data='/no/such/folder': no such folder"),
    (["--micro_batch=3"],
     "batch_size=4 must be a positive multiple of micro_batch * world_size = 3 * 1"),
    (["--batch_size=0"], "batch_size=0 must be >= 1"),
    (["--seed=-1", "--enc_heads=0"], "seed=-1 must be >= 0; enc_heads=0 must be >= 1"),
    (["--width=33"], "model settings: the enc width 33 is not divisible by enc_heads=2"),
    (["--window=80"], "window=80 > n_deltas=64"),
    (["--val_data=/no/such/folder"], "val_data='/no/such/folder': no such folder"),
    (["--labelprop_data=/no/such/folder"],
     "labelprop_data='/no/such/folder': DAVIS folder not found"),
])
def test_clear_errors(tmp_path, args, expected):
    if args == ["--device=xla"] and importlib.util.find_spec("torch_xla"):
        pytest.skip("torch_xla is installed here: tests/test_xla.py runs it")
    code, out = run_forked(train_args(tmp_path)[1:] + args)
    assert code != 0 and expected in out, out
    assert "Traceback" not in out, out


# -- one process: the whole story once -----------------------------------------------------------

def test_one_process_run(tmp_path):
    """Config file + overrides, the log, the lr schedule, weight decay groups, plots, checkpoint."""
    config = tmp_path / "tiny.py"
    config.write_text("# a config file is plain Python\nmax_steps = 8\ncore_layers = 2\n"
                      "min_lr = 1e-4\n")
    # max_steps=None: no override, the config file's 8 counts
    out = succeed(tmp_path / "out", config, core_layers=1, enc_mlp=48, eval_interval=4,
                  ckpt_interval=4, lr_decay_steps=6, max_steps=None)
    what_next = f"  python visualize.py --demo --ckpt={tmp_path / 'out' / 'ckpt.pt'}"
    assert out.splitlines()[-1] == what_next

    rows = log(tmp_path / "out")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(r["loss"] > 0 and r["examples_per_s"] > 0 and r["mfu"] > 0 for r in rows)
    assert all(0 < r["data_wait"] < 1 for r in rows)  # a share of the loop's time
    # lr: linear warm-up over 3 steps to 1e-3, cosine to min_lr 1e-4 at step 6, then flat.
    lrs = [r["lr"] for r in rows]
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert lrs[3] == pytest.approx(1e-4 + 0.5 * (1 + 0.5) * 0.9e-3)  # cos(pi/3) = 0.5
    assert lrs[4] == pytest.approx(1e-4 + 0.5 * (1 - 0.5) * 0.9e-3)  # cos(2pi/3)
    assert lrs[5:] == pytest.approx([1e-4] * 3)
    assert all(a > b for a, b in zip(lrs[2:5], lrs[3:6], strict=True))

    for png in ("loss.png", "reconstruction.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"

    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert {"model", "model_config", "optimizer", "step", "config", "data"} <= set(ckpt)
    assert ckpt["step"] == 8
    assert ckpt["config"]["max_steps"] == 8 and ckpt["config"]["min_lr"] == 1e-4
    assert ckpt["model_config"]["core_layers"] == 1  # the command line wins over the config file
    assert ckpt["data"] == {"streams": 4, "micro_batch": 1, "examples": 32}
    model = load_model(tmp_path / "out" / "ckpt.pt")  # every RVMConfig field is a setting
    assert model.config.width == 32 and len(model.rnn_core.transformer.xa_blocks) == 1
    assert model.encoder.layers[0].mlp.dense_in.out_features == 48

    # Weight decay on weight matrices and conv kernels only: no biases, norms, CLS/MASK tokens.
    decay, no_decay = ckpt["optimizer"]["param_groups"]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    shapes = dict(model.named_parameters())
    matrices = {n for n, p in shapes.items() if p.ndim >= 2}
    assert set(decay["params"]) == matrices - {"cls_token", "mask_token"}
    assert {"tokenizer.weight", "encoder.layers.0.attention.query.weight",
            "delta_embedder.weight"} <= set(decay["params"])
    assert {"cls_token", "mask_token", "tokenizer.bias", "encoder.norm.weight",
            "rnn_core.state_layer_norm.weight"} <= set(no_decay["params"])
    assert ckpt["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)


def test_a_loop_that_waits_for_data_says_so_and_names_the_remedies(tmp_path):
    """data_wait: the share of the loop's time spent waiting for the next batch. Large PNG frames
    decoded in the training process (num_workers=0) for a tiny model: the wait dominates, and one
    line names the remedies."""
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    (tmp_path / "big" / "clip").mkdir(parents=True)
    for i in range(10):
        iio.imwrite(tmp_path / "big" / "clip" / f"{i:05d}.png", np.roll(noise, i, axis=1))
    out = succeed(tmp_path / "out", data=tmp_path / "big", max_steps=3, ckpt_interval=0)
    assert all(r["data_wait"] > 0.1 for r in log(tmp_path / "out")), log(tmp_path / "out")
    warning = [line for line in out.splitlines() if "waiting for data" in line]
    assert len(warning) == 1, out[-3000:]  # said once, not at every line
    for remedy in ["--num_workers, now 0", "python data.py --src=VIDEOS --dst=PREPARED",
                   "--data=PREPARED", "--repeated_sampling=R"]:
        assert remedy in warning[0], warning


def test_bad_videos_are_passed_over_and_counted_by_reason(tmp_path):
    """A video with a variable frame rate and one corrupt halfway beside good frames: training goes
    on (here with repeated sampling), and log.jsonl counts the draws that met them, by reason."""
    from test_data import block_frames, coded_frames, write_corrupt_halfway, write_pngs
    from test_data import write_variable_rate
    frames = block_frames(80, 32)
    (tmp_path / "videos").mkdir()
    write_variable_rate(tmp_path / "videos" / "vfr.mp4", frames)
    write_corrupt_halfway(str(tmp_path / "videos" / "corrupt.mp4"), frames)
    write_pngs(tmp_path / "videos" / "good", coded_frames(80))
    (tmp_path / "videos" / "empty.mp4").write_bytes(b"")
    succeed(tmp_path / "out", data=tmp_path / "videos", max_steps=6, ckpt_interval=0,
            repeated_sampling=2)
    skipped = [r["skipped"] for r in log(tmp_path / "out") if "skipped" in r]
    assert skipped[0]["unreadable"] == 1 and skipped[-1]["unreadable"] == 1  # at start-up, once
    assert skipped[-1]["variable_rate"] > 0 and skipped[-1]["corrupt"] > 0, skipped[-1]
    pairs = zip(skipped, skipped[1:], strict=False)
    assert all(a[k] <= b[k] for a, b in pairs for k in a), "counts only grow"


# -- is it learning? the held-out loss and label propagation during training ---------------------

LABELPROP = dict(labelprop_resolution=(64, 112), labelprop_sequences="blackswan")


def test_held_out_loss_and_labelprop_during_training(tmp_path, davis):
    """val_data: the held-out loss at step 0 and every eval_interval steps, beside copying the last
    source frame (exactly 0 on a video that does not change) and the model at step 0;
    labelprop_data: J&F-Mean of core and encoder features, equal to eval_labelprop.py's on the
    checkpoint for the same sequences and resolution."""
    from eval_labelprop import davis_summary, main, model_features, propagate_and_score, read_davis

    still = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (tmp_path / "still" / "clip").mkdir(parents=True)
    for i in range(12):
        iio.imwrite(tmp_path / "still" / "clip" / f"{i:05d}.png", still)
    out = tmp_path / "out"
    succeed(out, val_data=tmp_path / "still", val_clips=3, labelprop_data=davis / "davis2017-mini",
            max_steps=2, eval_interval=2, **LABELPROP)
    rows = evaluations(out)
    assert [r["step"] for r in rows] == [0, 2]
    assert all(r["val_loss_copy_last"] == 0.0 and r["val_loss"] > 0 for r in rows)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"

    model = load_model(out / "ckpt.pt")
    videos = read_davis(davis / "davis2017-mini", ["blackswan"])
    extract = lambda frames: model_features(model, frames, per_frame=True)  # noqa: E731
    scored = propagate_and_score("davis", videos, extract, (64, 112), model.config.patch_size)
    assert davis_summary(scored)["jf"] == rows[-1]["jf_encoder"]
    # and the core's through the command line:
    line = main(["--task=davis", f"--data={davis / 'davis2017-mini'}", f"--ckpt={out / 'ckpt.pt'}",
                 "--resolution", "64", "112", "--sequences=blackswan",
                 f"--out_dir={tmp_path / 'labelprop'}"])
    assert line.startswith(f"J&F-Mean {rows[-1]['jf_core']:.3f}"), line


@pytest.mark.slow
def test_evaluating_changes_no_training_and_scores_fixed_clips(tmp_path, reference, davis):
    """Evaluations leave the training as it was: the same losses and bitwise the same final weights.
    With a learning rate of 0 the model stays as it was: every evaluation scores the same clips and
    masks alike, and two processes (FSDP2: rank 0 evaluates a gathered copy) score them as one
    does."""
    succeed(tmp_path / "eval", val_data="noise_square", labelprop_data=davis / "davis2017-mini",
            eval_interval=10, **LABELPROP)
    assert losses(tmp_path / "eval") == reference[0]
    assert len(evaluations(tmp_path / "eval")) == 3
    final = torch.load(tmp_path / "eval" / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], v) for k, v in reference[1].items())

    still = dict(val_data="noise_square", eval_interval=2, max_steps=4, learning_rate=None,
                 base_lr=0.0)
    succeed(tmp_path / "one", **still)
    succeed(tmp_path / "two", nproc=2, sharding="fsdp", **still)
    one = evaluations(tmp_path / "one")
    assert [r["step"] for r in one] == [0, 2, 4] and len({r["val_loss"] for r in one}) == 1
    assert evaluations(tmp_path / "two") == one


def test_a_diverging_run_stops_and_keeps_no_bad_checkpoint(tmp_path):
    """A learning rate of 1e30 makes the weights overflow at the second step: the run stops with one
    line before any checkpoint of the broken weights is written."""
    code, out = launch(tmp_path, max_steps=6, ckpt_interval=1, learning_rate=1e30)
    assert code == 1, out
    assert "step 2: loss nan" in out and "not finite" in out, out
    assert "lower the learning rate" in out, out
    assert "Traceback" not in out
    assert [r["step"] for r in log(tmp_path)] == [1]
    # the last one before the NaN
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 1
    assert "(step 1), is kept" in out


@pytest.mark.slow
def test_a_leftover_partial_checkpoint_does_not_stop_a_resume(tmp_path):
    """A crash in the middle of a checkpoint write leaves ckpt.pt.tmp; ckpt.pt is still the last
    good one."""
    succeed(tmp_path, max_steps=4, ckpt_interval=2)
    blob = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt.tmp").write_bytes(blob[: len(blob) // 2])
    succeed(tmp_path, max_steps=6, ckpt_interval=2, init_from="resume")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] == 6
    assert not (tmp_path / "ckpt.pt.tmp").exists()


# -- resuming and many processes: all against one uninterrupted single-process run ---------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """20 steps in one process, float32: losses and final weights."""
    out = tmp_path_factory.mktemp("reference")
    succeed(out)
    return losses(out), torch.load(out / "ckpt.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_resume_one_process_is_bitwise(tmp_path, reference):
    # Killed from outside after the step-10 checkpoint (max_steps is larger so that it cannot finish
    # first; lr_decay_steps=20 keeps the schedule the reference's), then resumed to step 20.
    kill_after(tmp_path, 12, max_steps=10_000)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"] >= 10
    succeed(tmp_path, init_from="resume")
    assert losses(tmp_path) == reference[0]  # the log's steps 11-13 of the killed run are replaced
    final = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], v) for k, v in reference[1].items())

    # A resume with other settings is refused, naming each; once named, it goes on and the log
    # says so.
    changed = dict(width=64, seed=1, learning_rate=2e-3, max_steps=22)
    code, out = run_forked(train_args(tmp_path, init_from="resume", **changed)[1:])
    assert code != 0 and "Traceback" not in out, out
    for text in ["width 32 -> 64", "seed 0 -> 1", "learning_rate 0.001 -> 0.002",
                 "--allow_changes=learning_rate,seed,width"]:
        assert text in out, out
    succeed(tmp_path, init_from="resume", learning_rate=2e-3, max_steps=22,
            allow_changes="learning_rate")
    noted = {"learning_rate": ["0.001", "0.002"]}
    assert log(tmp_path)[20] == {"step": 20, "resumed_with_changes": noted}
    assert [r["step"] for r in log(tmp_path)] == list(range(1, 21)) + [20, 21, 22]


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_equal_one(tmp_path, reference, sharding):
    succeed(tmp_path, nproc=2, sharding=sharding)
    assert losses(tmp_path) == pytest.approx(reference[0], rel=1e-5)


@pytest.mark.slow
def test_a_bad_data_folder_stops_every_process_with_one_line(tmp_path):
    code, out = launch(tmp_path, nproc=2, data=str(tmp_path / "no_such_folder"))
    assert code != 0
    assert out.count("no such folder") == 1 and "train.py: rank 0: data=" in out, out
    assert "gloo" not in out.lower() and "Connection closed" not in out, out
    empty = tmp_path / "empty"
    empty.mkdir()
    # found, but nothing in it: after the process group
    code, out = launch(tmp_path / "out", nproc=2, data=str(empty))
    assert code != 0 and out.count("no usable video in") == 1, out
    assert "Connection closed" not in out and "train.py: rank 0:" in out, out


@pytest.mark.slow
def test_two_processes_fsdp_bf16(tmp_path):
    """bf16: FSDP2 gathers bf16 weights and reduces float32 gradients; still the single-process
    run."""
    succeed(tmp_path / "one", dtype="bfloat16", max_steps=6)
    succeed(tmp_path / "two", nproc=2, dtype="bfloat16", max_steps=6, sharding="fsdp")
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-2)


@pytest.mark.slow
def test_resume_two_processes_fsdp(tmp_path, reference):
    kill_after(tmp_path / "two", 12, nproc=2, sharding="fsdp", max_steps=10_000)
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    succeed(tmp_path / "two", nproc=2, sharding="fsdp", init_from="resume")
    assert [r["step"] for r in log(tmp_path / "two")] == list(range(1, 21))
    assert losses(tmp_path / "two") == pytest.approx(reference[0], rel=1e-5)
    load_model(tmp_path / "two" / "ckpt.pt")  # FSDP's checkpoint is a plain full state dict
    # The data does not depend on the number of processes: the same checkpoint continues on one.
    succeed(tmp_path / "one", init_from="resume")
    assert losses(tmp_path / "one") == pytest.approx(reference[0], rel=1e-5)


@pytest.mark.slow
def test_init_from_official_weights(tmp_path):
    """init_from=<authors' .npz>: their micro model (tests/reference/README.md) as the starting
    point."""
    path = REFERENCE / "official_micro_a.npz"
    micro = dict(image_size=64, patch_size=16, enc_mlp=128, core_layers=2, core_mlp=128,
                 dec_width=64, dec_layers=2, dec_heads=4, dec_mlp=256, mask_ratio=0.95, max_steps=1,
                 learning_rate=1e-12)
    succeed(tmp_path, init_from=path, **micro)
    trained = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    for name, value in load_official(path).state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6)
    code, out = launch(tmp_path / "other", init_from=path, **{**micro, "dec_layers": 8})
    assert code != 0 and "dec_layers=2 vs 8" in out, out


# -- no run is ever lost ----------------------------------------------------------------------

@pytest.mark.slow
def test_an_out_dir_belongs_to_one_run(tmp_path):
    """A second run stops while the first lives, naming it; the lock of a killed run is taken over;
    a fresh run does not overwrite a run's out_dir."""
    live = start([sys.executable] + train_args(tmp_path, max_steps=100_000, ckpt_interval=1))
    try:
        wait_for_steps(live, tmp_path, 3)
        for settings in ({"init_from": "resume"}, {}):
            code, out = run_forked(train_args(tmp_path, max_steps=100_000, **settings)[1:])
            holder = f"in use by another training run (train.py, pid {live.pid} on"
            assert code == 1 and holder in out, out
    finally:
        os.killpg(live.pid, signal.SIGKILL)
        live.communicate()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # a bare rerun, as after a preemption
    code, out = run_forked(train_args(tmp_path, max_steps=100_000)[1:])
    assert code == 1 and "holds a run" in out and "--init_from=resume continues it" in out, out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "nothing touched"
    step = torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"]
    succeed(tmp_path, init_from="resume", max_steps=step + 2)  # the dead run's lock is taken over
    assert log(tmp_path)[-1]["step"] == step + 2


@pytest.mark.slow
def test_workers_stop_when_their_launcher_is_killed(tmp_path):
    proc = start(launcher(2) + train_args(tmp_path, max_steps=100_000, sharding="ddp"))
    wait_for_steps(proc, tmp_path, 2)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone, as an operator's kill -9 would
    proc.communicate()
    assert not alive_after(tmp_path, 10), "a worker outlived its launcher"
    state = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    time.sleep(2)
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert after == state, "nothing written after"


# -- a cluster's signals save the run --------------------------------------------------------------

# Long enough to be signalled at a random step; checkpoints come only at the end (or by the clock,
# ckpt_minutes).
SIGNALLED = dict(max_steps=60, lr_decay_steps=60, ckpt_interval=0, init_from="auto")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final weights of SIGNALLED runs that nothing interrupts, on one process and on two
    (FSDP2)."""
    weights = {}
    for nproc in (1, 2):
        out = tmp_path_factory.mktemp(f"uninterrupted{nproc}")
        succeed(out, nproc=nproc, **SIGNALLED)
        weights[nproc] = torch.load(out / "ckpt.pt", weights_only=True)["model"]
    return weights


def signal_run(out_dir, n_steps, signals, nproc=1, to="launcher", **settings):
    """Start a SIGNALLED run and, once its log has n_steps lines (and a checkpoint by the clock, if
    ckpt_minutes), send it `signals` from outside, one right after the other: to the process started
    (python or torchrun), to every process of the run, or to one worker. Returns (the started
    process's exit status, its output)."""
    proc = start(launcher(nproc) + train_args(out_dir, **{**SIGNALLED, **settings}))
    wait_for_steps(proc, out_dir, n_steps, checkpoint="ckpt_minutes" in settings)
    workers = sorted(set(processes(out_dir)) - {proc.pid})
    targets = {"launcher": [proc.pid], "every process": [proc.pid] + workers,
               "one worker": workers[:1]}[to]
    for sig in signals:
        for pid in targets:
            os.kill(pid, sig)
    try:
        out = proc.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the signalled run hangs: " + proc.communicate()[0][-3000:])
    assert not alive_after(out_dir, 10), "a process outlived the run"
    return proc.returncode, out


def saved_step(out_dir, out, name):
    """The step of the one checkpoint a signal saved, which one line of the output names."""
    step = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)["step"]
    assert out.count(f"train.py: {name} at step {step}: saved {out_dir}") == 1, out[-3000:]
    assert not os.path.exists(os.path.join(out_dir, "ckpt.pt.tmp"))
    return step


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_one_process_and_the_same_command_continues(tmp_path, uninterrupted, sig):
    """At a random step, checkpoints by the clock meanwhile: one checkpoint at the step reached, one
    line, exit status 99; the same command line (init_from='auto') finishes the run, bitwise as if
    nothing had happened."""
    n_steps = random.Random(sig.value).randint(5, 40)
    code, out = signal_run(tmp_path, n_steps, [sig], ckpt_minutes=1e-4)
    assert code == 99 and "Traceback" not in out, out[-3000:]
    assert n_steps <= saved_step(tmp_path, out, sig.name) < 60
    succeed(tmp_path, **SIGNALLED, ckpt_minutes=1e-4)
    final = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert final["step"] == 60
    assert all(torch.equal(final["model"][k], v) for k, v in uninterrupted[1].items())


@pytest.mark.slow
def test_signals_save_two_processes_and_the_same_command_continues(tmp_path, uninterrupted):
    """Under torchrun: a SIGTERM to the launcher, which passes it on to its workers; a SIGUSR1 to
    every process, which ends the launcher at once (torchrun does not handle it) while the workers
    save; a SIGTERM to one worker of two, which the other learns of at the step's end, without a
    hang. Each time one checkpoint at the step reached; then the same command line finishes the run,
    bitwise as the uninterrupted two-process run."""
    steps = []
    for sig, to in [(signal.SIGTERM, "launcher"), (signal.SIGUSR1, "every process"),
                    (signal.SIGTERM, "one worker")]:
        n_steps = 5
        if steps:
            n_steps = len(log(tmp_path)) + 5
        code, out = signal_run(tmp_path, n_steps, [sig], nproc=2, to=to)
        steps.append(saved_step(tmp_path, out, sig.name))
    assert steps == sorted(steps) and steps[-1] < 60, steps
    # torchrun's report: both workers exited with 99
    assert out.count("exitcode  : 99") == 2, out[-3000:]
    succeed(tmp_path, nproc=2, **SIGNALLED)
    final = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], v) for k, v in uninterrupted[2].items())


@pytest.mark.slow
def test_the_readmes_slurm_script_requeues_and_the_requeued_job_continues(tmp_path, uninterrupted):
    """The README's batch script as written, SLURM played by stand-ins on PATH: srun runs its
    command, and scontrol's requeue ends the job's processes with SIGTERM as SLURM does. SIGUSR1 to
    the script (what --signal=B:USR1@120 sends) requeues it and the run saves; the script run again
    (the requeued job) finishes the run, bitwise as the uninterrupted two-process run."""
    readme = (ROOT / "README.md").read_text()
    script = re.search(r"```bash\n(#!/bin/bash\n#SBATCH.*?)```", readme, re.S).group(1)
    args = " ".join(shlex.quote(a) for a in train_args(tmp_path / "out", **SIGNALLED)[1:])
    ours = f"--nproc_per_node=2 train.py {args} &"
    script = re.sub(r"--nproc_per_node=\d+ train\.py [^&]*&", ours, script)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (tmp_path / "bin" / "scontrol").write_text(  # (ps pads the group id: tr trims it)
        f'#!/bin/bash\necho "$@" >> {tmp_path}/requeued\n'
        'kill -TERM -- -$(ps -o pgid= $PPID | tr -d " ")\n')
    for stand_in in ("srun", "scontrol"):
        (tmp_path / "bin" / stand_in).chmod(0o755)
    (tmp_path / "job.sh").write_text(script)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    job = subprocess.Popen(["bash", str(tmp_path / "job.sh")], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    wait_for_steps(job, tmp_path / "out", 5)
    os.kill(job.pid, signal.SIGUSR1)
    out = job.communicate(timeout=TIMEOUT)[0]
    assert not alive_after(tmp_path / "out", 30), "a process outlived the requeue"
    assert (tmp_path / "requeued").read_text() == "requeue 42\n"
    assert 5 <= saved_step(tmp_path / "out", out, "SIGTERM") < 60
    rerun = subprocess.run(["bash", str(tmp_path / "job.sh")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert (tmp_path / "requeued").read_text() == "requeue 42\n", rerun.stdout[-3000:]
    final = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert final["step"] == 60
    assert all(torch.equal(final["model"][k], v) for k, v in uninterrupted[2].items())


@pytest.mark.slow
def test_two_signals_in_quick_succession_leave_a_whole_checkpoint(tmp_path):
    code, out = signal_run(tmp_path, 5, [signal.SIGTERM, signal.SIGUSR1, signal.SIGTERM])
    assert code == 99 and "Traceback" not in out, out[-3000:]
    step = saved_step(tmp_path, out, "SIGTERM")
    assert load_model(tmp_path / "ckpt.pt") is not None and step >= 5


@pytest.mark.slow
def test_a_killed_loader_worker_is_one_line_and_the_last_checkpoint_stays(tmp_path):
    """The kernel's out-of-memory killer picks the largest process: here a loader worker gets
    SIGKILL."""
    proc = start([sys.executable] + train_args(tmp_path, max_steps=100_000, micro_batch=4,
                                               num_workers=1, ckpt_interval=5))
    wait_for_steps(proc, tmp_path, 12, checkpoint=True)
    loader_workers = [pid for pid in processes(tmp_path) if pid != proc.pid]
    assert len(loader_workers) == 1
    os.kill(loader_workers[0], signal.SIGKILL)
    out = proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    line = [line for line in out.split("train.py: ")[1:] if "loader worker" in line]
    assert len(line) == 1 and "stream 0: a loader worker died" in line[0], out[-3000:]
    assert "Lower num_workers (now 1) or micro_batch (now 4)" in line[0], line
    step = torch.load(tmp_path / "ckpt.pt", weights_only=True)["step"]
    assert step % 5 == 0
    assert f"The last checkpoint, {tmp_path / 'ckpt.pt'} (step {step}), is kept" in line[0], line


@pytest.mark.slow
def test_damaged_files_are_one_line_and_nothing_good_is_lost(tmp_path):
    succeed(tmp_path, max_steps=4, ckpt_interval=2)
    good = (tmp_path / "ckpt.pt").read_bytes()
    # A log line cut short by a crash is dropped when the run resumes.
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    succeed(tmp_path, max_steps=6, ckpt_interval=2, init_from="resume")
    assert [r["step"] for r in log(tmp_path)] == [1, 2, 3, 4, 5, 6]
    # A checkpoint that is empty or not ours: one line naming it.
    for blob in (b"", b"not a checkpoint"):
        (tmp_path / "ckpt.pt").write_bytes(blob)
        code, out = run_forked(train_args(tmp_path, max_steps=8, init_from="resume")[1:])
        assert code == 1 and "ckpt.pt" in out and "not a readable train.py checkpoint" in out, out
        assert "Traceback" not in out and "mmap" not in out, out
    # A checkpoint that cannot be written (a full disk, made here with a file-size limit): the run
    # stops with one line, removes its partial file, and the last good checkpoint stays.
    (tmp_path / "ckpt.pt").write_bytes(good)
    half = len(good) // 2
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (half, half))  # noqa: E731
    args = train_args(tmp_path, max_steps=6, ckpt_interval=2, init_from="resume",
                      allow_changes="max_steps")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT, preexec_fn=limit)
    assert out.returncode == 1 and "could not write" in out.stderr, out.stderr
    assert "is the disk full?" in out.stderr, out.stderr
    assert "(step 4), is kept" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "ckpt.pt").read_bytes() == good
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    # A run that diverges after a checkpoint: stopped before saving, the good one kept.
    code, out = launch(tmp_path, max_steps=8, ckpt_interval=2, init_from="resume",
                       learning_rate=1e30, allow_changes="learning_rate,max_steps")
    assert code == 1 and "step 6: loss nan" in out and "(step 4), is kept" in out, out
    assert (tmp_path / "ckpt.pt").read_bytes() == good


@pytest.mark.slow
def test_two_nodes(tmp_path, reference):
    """Two torchrun agents (as on two machines) meet at a c10d rendezvous on 127.0.0.1."""
    port = free_port()
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
               "--rdzv_id=test_two_nodes", *train_args(tmp_path, sharding="fsdp")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("two-node run timed out")
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "2 process(es)" in "".join(outs)
    assert losses(tmp_path) == pytest.approx(reference[0], rel=1e-5)
