"""train.py on XLA, through torch_xla's CPU runtime (PJRT_DEVICE=CPU; CPU_NUM_DEVICES=4 gives four
virtual devices). These run where torch_xla imports -- an environment made as the README's "On
TPUs" says -- and are skipped elsewhere, CI included (it has no torch_xla)."""
import os
import subprocess

import pytest
import torch

from conftest import ROOT
from test_train import launcher, log, losses, train_args

pytest.importorskip("torch_xla", reason="torch_xla is not installed (README, 'On TPUs', says how)")
XLA = dict(device="xla", max_steps=10, lr_decay_steps=20)


def run(out_dir, nproc=1, devices=1, **settings):
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": str(devices),
           "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = launcher(nproc) + train_args(out_dir, **{**XLA, **settings})
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return out.returncode, out.stdout + out.stderr


@pytest.fixture(scope="module")
def cpu_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu")
    code, text = run(out, device="cpu", sharding="none")
    assert code == 0, text[-3000:]
    return losses(out)


def test_one_process_equals_the_cpu_path_in_one_graph_per_step(tmp_path, cpu_reference):
    code, text = run(tmp_path, sharding="none")
    assert code == 0, text[-3000:]
    assert losses(tmp_path) == pytest.approx(cpu_reference, abs=1e-5)
    rows = log(tmp_path)
    # steady state: every step one graph, nothing compiled (the first steps compile; the step after
    # the step-10 checkpoint is not in this run)
    assert [r["xla_graphs_per_step"] for r in rows[2:]] == [1.0] * (len(rows) - 2)
    assert [r["xla_compiles"] for r in rows[2:9]] == [0] * 7
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # CPU tensors, a plain checkpoint
    assert ckpt["model"]["tokenizer.weight"].device.type == "cpu"


def test_resume_continues_exactly(tmp_path):
    code, text = run(tmp_path / "whole", sharding="none", max_steps=8)
    assert code == 0, text[-3000:]
    for max_steps in (4, 8):
        code, text = run(tmp_path / "split", sharding="none", max_steps=max_steps, ckpt_interval=4,
                         init_from="resume" if max_steps == 8 else "scratch")
        assert code == 0, text[-3000:]
    assert losses(tmp_path / "split") == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)


def test_spmd_shards_weights_and_optimizer_state_with_the_losses_of_one_device(tmp_path):
    settings = dict(batch_size=4, micro_batch=4, max_steps=6)
    code, text = run(tmp_path / "one", sharding="none", **settings)
    assert code == 0, text[-3000:]
    code, text = run(tmp_path / "four", devices=4, sharding="fsdp", **settings)
    assert code == 0, text[-3000:]
    # what each of the four devices holds of the largest weight, as the run reports it
    assert "SPMD over 4 XLA devices" in text, text[-3000:]
    quarter = "[8, 3, 8, 8]"
    assert f"tokenizer.weight [32, 3, 8, 8] as {' + '.join([quarter] * 4)}" in text, text[-3000:]
    assert losses(tmp_path / "four") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert [r["xla_graphs_per_step"] for r in log(tmp_path / "four")[2:]] == [1.0] * 4


def test_two_processes_on_the_cpu_runtime_stop_with_the_reason(tmp_path):
    code, text = run(tmp_path, nproc=2, sharding="ddp")
    reason = "torchrun started 2 processes, but the xla process group holds 1"
    assert code != 0 and reason in text, text[-3000:]
    code, text = run(tmp_path / "b", nproc=2, sharding="fsdp")
    assert code != 0 and "SPMD: one process over all its devices" in text, text[-3000:]
    assert not (tmp_path / "ckpt.pt").exists()


def test_compile_and_activation_checkpointing_on_xla(tmp_path, cpu_reference):
    for name, setting in [("compiled", {"compile": True}),
                          ("checkpointed", {"grad_checkpoint": True})]:
        code, text = run(tmp_path / name, sharding="none", **setting)
        assert code == 0, text[-3000:]
        assert losses(tmp_path / name) == pytest.approx(cpu_reference, abs=1e-5), name
