"""The commands of the README and of the scripts' docstrings run as written, at toy size: every
`python` and `torchrun` line, README first, in a scratch folder that holds the scripts (so that a
command finds what an earlier one wrote, as on a fresh clone). Toy settings are appended (fewer
steps, smaller frames), and the data the README asks a user to provide is made here or taken
from $RVM_DATA.
Also: the demo's numbers in the README are what the demo prints for the checkpoint `python
train.py` writes, when that checkpoint exists (the full run takes minutes: not in CI)."""
import ast
import importlib.util
import os
import re
import runpy
import shlex
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import DATA, REFERENCE, ROOT

TOY = {"train.py": "--max_steps=2 --batch_size=2 --micro_batch=1 --num_workers=0 "
                   "--warmup_steps=1 --log_interval=1 --eval_interval=2 --dtype=float32 "
                   "--enc_layers=1 --core_layers=1 --dec_layers=1 --val_clips=2 "
                   "--labelprop_sequences=blackswan --labelprop_resolution=(64,112)",
       "eval_labelprop.py": "--max_frames=4 --resolution 64 112",
       "visualize.py": "--frames=6",
       "bench.py": "--quick --json=bench.json --batch=2 --image_size=32"}


def documented_commands():
    """The commands of the README's bash blocks, then the scripts' docstrings', once each."""
    texts = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    texts += [ast.get_docstring(ast.parse((ROOT / f).read_text())) for f in
              ("train.py", "eval_labelprop.py", "visualize.py", "bench.py")]
    commands = []
    for text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            command = " ".join(line.split(" # ")[0].split())
            if command.startswith(("python ", "torchrun ")) and command not in commands:
                commands.append(command)
    return commands


def toy(command):
    """The command at toy size: toy settings appended, 8 processes made 2, the config named."""
    words = shlex.split(command)
    script = next(w for w in words if w.endswith(".py"))
    if words == ["python", "train.py"]:
        # what no arguments runs; with toy settings it needs naming
        words.append("configs/noise_square.py")
    words = [w.replace("--nproc_per_node=8", "--nproc_per_node=2") for w in words]
    extra = TOY.get(script, "")
    if script == "train.py" and "noise_square" not in words[-1]:
        extra += " --image_size=32"
    if script == "eval_labelprop.py" and "--long_horizon" in words:
        extra = extra.replace("--max_frames=4", "--horizons=4,6")
    # the toy settings, each flag with the values that follow it ("--resolution 64 112")
    groups = []
    for w in extra.split():
        if w.startswith("--"):
            groups.append([w])
        else:
            groups[-1].append(w)
    # A toy setting the command has as written is not repeated; any other comes after the
    # command's, and wins.
    command = [sys.executable if w == "python" else w for w in words]
    for g in groups:
        if not any(words[i:i + len(g)] == g for i in range(len(words))):
            command += g
    return command


def workspace(tmp_path):
    """The scripts (linked) and the data the README tells a user to put in data/."""
    for name in ["model.py", "data.py", "train.py", "safeguards.py", "eval_labelprop.py",
                 "visualize.py", "bench.py", "configs"]:
        (tmp_path / name).symlink_to(ROOT / name)
    videos = tmp_path / "data" / "videos"
    videos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):  # two short clips of moving blocks
        blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        frames = np.stack([np.roll(blocks, t, axis=1) for t in range(20)])
        frames = frames.repeat(4, 1).repeat(4, 2)
        iio.imwrite(videos / f"clip{i}.mp4", frames, plugin="pyav", codec="libx264", fps=25)
    iio.imwrite(tmp_path / "clip.mp4", frames, plugin="pyav", codec="libx264", fps=25)
    (tmp_path / "frames").mkdir()
    for t, frame in enumerate(frames):
        iio.imwrite(tmp_path / "frames" / f"{t:05d}.jpg", frame)
    # the authors' layout: their micro reference model stands in
    for name in ("rvm_s.npz", "rvm_l.npz"):
        (tmp_path / name).symlink_to(REFERENCE / "official_micro_a.npz")
    from test_labelprop import _jhmdb_fixture, _vip_fixture
    _vip_fixture(tmp_path / "data" / "VIP_Fine")
    _jhmdb_fixture(tmp_path / "data" / "JHMDB")
    if (DATA / "davis2017-mini").is_dir():
        (tmp_path / "data" / "DAVIS").symlink_to(DATA / "davis2017-mini")


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    commands = documented_commands()
    assert any(c.startswith("python train.py configs/s.py") for c in commands)
    assert len(commands) > 10
    workspace(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RVM_CACHE_DIR": str(tmp_path / "cache")}
    done = set()
    for command in commands:
        # `bench.py` and `bench.py --quick` are the same at toy size
        if tuple(toy(command)) in done:
            continue
        done.add(tuple(toy(command)))
        # several machines: tests/test_train.py runs two nodes on loopback
        if "--nnodes=" in command:
            continue
        if "--device=xla" in command and not importlib.util.find_spec("torch_xla"):
            continue  # tests/test_xla.py covers it where torch_xla is installed
        # no DAVIS here (RVM_DATA): the DAVIS commands are skipped, the others still run
        if "data/DAVIS" in command and not (tmp_path / "data" / "DAVIS").exists():
            continue
        out = subprocess.run(toy(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


def test_readme_demo_numbers_are_what_the_demo_prints(tmp_path):
    ckpt = ROOT / "out" / "noise_square" / "ckpt.pt"
    if not ckpt.exists():
        pytest.skip("train the demo first (python train.py): the README's numbers come from its "
                    "checkpoint")
    import torch
    max_steps = runpy.run_path(str(ROOT / "configs" / "noise_square.py"))["max_steps"]
    if torch.load(ckpt, weights_only=True)["step"] != max_steps:
        pytest.skip(f"{ckpt} is not a finished {max_steps}-step run of configs/noise_square.py")
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```text\n(noise square 8x8.*?)```", readme, re.S).group(1)
    demo = [sys.executable, "visualize.py", "--demo", f"--ckpt={ckpt}", f"--out_dir={tmp_path}"]
    out = subprocess.run(demo, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert block.strip() == "\n".join(out.stdout.splitlines()[:-1]).strip()
