"""Data-parallel training and cohort segmentation on CPU with gloo (2 processes).

* ``torch.multiprocessing.spawn`` runs :func:`train` on 2 ranks: ranks end with identical
  weights; 2 ranks x 2 samples follow the same loss trajectory as 1 process x 4 samples;
  only rank 0 writes; the 2-rank checkpoint resumes on 1 process exactly where an
  uninterrupted 1-process run would be (step, weights, optimiser moments).
* ``torchrun --nproc_per_node 2 -m napari_medsegdiff train|segment`` runs the real CLI:
  the cohort outputs are written once each, equal the 1-process result, and ``--resume``
  skips finished scans.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medsegdiff.config import SamplerConfig, TrainConfig, preset
from napari_medsegdiff.data import SliceSet
from napari_medsegdiff.distributed import backend_for, shard
from napari_medsegdiff.training import sample_noise
from napari_medsegdiff.training_state import STATE_TENSORS

# ----------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _slices(n: int, seed: int) -> SliceSet:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    centres = torch.randint(8, 24, (n, 2), generator=g).float()
    radius = torch.randint(4, 9, (n,), generator=g).float()
    dist2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    labels = (dist2 < radius[:, None, None] ** 2).long()
    images = labels[:, None].float() * 1.2 - 0.6 + 0.2 * torch.randn(n, 1, 32, 32, generator=g)
    return SliceSet(images, labels, [f"s{i}" for i in range(n)])


CFG = preset("tiny", version="v2")


def _tcfg(steps: int) -> TrainConfig:
    # Global batch 4 (2 per rank); V2 anchor loss every 2nd step (graph varies per step).
    return TrainConfig(
        steps=steps,
        batch_size=4,
        lr=2e-3,
        ema_decay=0.9,
        augment=False,
        val_every=2,
        save_every=2,
        val_steps=2,
        aux_loss_interval=2,
        seed=3,
    )


def _forbid_writes(module) -> None:
    """On ranks > 0 any checkpoint write is a bug: make it fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a rank other than 0 tried to write a checkpoint")

    module.save_model = refuse
    module.save_last = refuse


def _train_worker(rank: int, world: int, port: int, out: str, results: str) -> None:
    import torch.distributed as dist

    import napari_medsegdiff.model as model_module
    from napari_medsegdiff import training
    from napari_medsegdiff.distributed import distributed_session

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with distributed_session("cpu") as dev:  # reuses the group, yields this rank's device
            assert dev == torch.device("cpu")
        assert dist.is_initialized()
        if rank != 0:
            _forbid_writes(training)
        built = []
        real_build = model_module.build_model

        def recording_build(cfg):
            built.append(real_build(cfg))
            return built[-1]

        model_module.build_model = recording_build
        result = training.train(CFG, _tcfg(4), _slices(12, 0), out, val=_slices(3, 1), device="cpu")
        assert result.steps_done == 4
        assert (result.last is not None) == (rank == 0)

        # Parameters outside the loss graph (here a spare layer) need
        # find_unused_parameters; training must not stall or raise.
        def spare_build(cfg):
            model = real_build(cfg)
            model.spare = torch.nn.Linear(2, 2)
            return model

        model_module.build_model = spare_build
        training.train(CFG, _tcfg(2), _slices(12, 0), Path(out).parent / "spare", device="cpu")
        torch.save(
            {
                "losses": result.losses,
                "val_dice": result.val_dice,
                "params": {k: v.clone() for k, v in built[0].state_dict().items()},
            },
            Path(results) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _last_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "last" / STATE_TENSORS))


def _write_nifti(path: Path, data: np.ndarray) -> None:
    import nibabel as nib

    nib.Nifti1Image(data, np.eye(4)).to_filename(str(path))


def _torchrun(args: list[str], nproc: int = 2, timeout: float = 240) -> str:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "napari_medsegdiff",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


# ---------------------------------------------------------------------- fast unit tests


def test_backend_follows_device():
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"


def test_shard_covers_every_item_once():
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(i for part in parts for i in part) == items
    assert shard(items) == items  # one process: everything


def test_noise_depends_on_sample_not_on_batch():
    t_all, n_all = sample_noise([5, 2, 7, 1], step=3, seed=0, shape=(1, 4, 4), num_timesteps=1000)
    t_half, n_half = sample_noise([7, 1], step=3, seed=0, shape=(1, 4, 4), num_timesteps=1000)
    assert torch.equal(t_all[2:], t_half) and torch.equal(n_all[2:], n_half)
    _, n_next = sample_noise([7, 1], step=4, seed=0, shape=(1, 4, 4), num_timesteps=1000)
    assert not torch.equal(n_next, n_half)


def test_probe_finds_unused_parameters():
    from napari_medsegdiff.diffusion.schedule import NoiseSchedule
    from napari_medsegdiff.model import build_model
    from napari_medsegdiff.objective import has_unused_parameters

    data = _slices(1, 0)
    model = build_model(CFG)
    schedule = NoiseSchedule(CFG)
    assert not has_unused_parameters(model, schedule, CFG, data, torch.device("cpu"))
    model.spare = torch.nn.Linear(2, 2)
    assert has_unused_parameters(model, schedule, CFG, data, torch.device("cpu"))
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------- 2-process training


@pytest.mark.slow
def test_two_ranks_train_like_one_process_and_resume_on_one(tmp_path):
    import torch.multiprocessing as mp

    from napari_medsegdiff.training import train

    ddp_out, results = tmp_path / "ddp", tmp_path / "results"
    results.mkdir()
    mp.spawn(_train_worker, args=(2, _free_port(), str(ddp_out), str(results)), nprocs=2, join=True)
    r0, r1 = (torch.load(results / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    # DDP kept the replicas identical; losses and validation are global, so equal too.
    assert r0["params"].keys() == r1["params"].keys()
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 4
    assert [s for s, _ in r0["val_dice"]] == [2, 4] and r0["val_dice"] == r1["val_dice"]

    # Rank 0 wrote best/ and last/ and nothing else (no stray temp folders).
    assert sorted(p.name for p in ddp_out.iterdir()) == ["best", "last"]
    assert (
        json.loads((ddp_out / "last" / "training_state.json").read_text(encoding="utf-8"))["step"]
        == 4
    )

    # One process with the whole batch of 4: the same trajectory.
    ref_out = tmp_path / "ref"
    ref = train(CFG, _tcfg(6), _slices(12, 0), ref_out, val=_slices(3, 1), device="cpu")
    np.testing.assert_allclose(r0["losses"], ref.losses[:4], rtol=1e-4, atol=1e-6)
    # Validation Dice from shards of the held-out set (summed over ranks) = 1 process.
    assert [step for step, _ in ref.val_dice] == [2, 4, 6]
    np.testing.assert_allclose(
        [v for _, v in r0["val_dice"]], [v for _, v in ref.val_dice[:2]], atol=0.01
    )

    # Resume the 2-rank checkpoint on 1 process: continues at step 4 with the saved
    # optimiser moments and data position, landing where the uninterrupted run did.
    resumed = train(
        CFG, _tcfg(6), _slices(12, 0), ddp_out, val=_slices(3, 1), device="cpu", resume=True
    )
    assert resumed.steps_done == 6 and len(resumed.losses) == 6
    assert resumed.losses[:4] == r0["losses"]
    np.testing.assert_allclose(resumed.losses, ref.losses, rtol=1e-4, atol=1e-6)
    mine, theirs = _last_state(ddp_out), _last_state(ref_out)
    assert mine.keys() == theirs.keys()
    assert any(k.startswith("opt.") for k in mine)
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.slow
def test_torchrun_cli_train_then_resume_on_one_process(tmp_path):
    from napari_medsegdiff.cli import main

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        lab = np.zeros((32, 32, 3), np.uint8)
        lab[8 + i : 20 + i, 10:22] = 1
        _write_nifti(
            data / "images" / f"c{i}.nii.gz",
            (lab * 100 + rng.normal(0, 10, lab.shape)).astype(np.float32),
        )
        _write_nifti(data / "labels" / f"c{i}.nii.gz", lab)
    out = tmp_path / "out"
    common = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--batch-size",
        "4",
        "--val-every",
        "2",
        "--device",
        "cpu",
        "--no-augment",
    ]
    stdout = _torchrun([*common, "--steps", "2"])
    assert stdout.count("trained 2 steps") == 1  # rank 0 reports, once
    assert (
        json.loads((out / "last" / "training_state.json").read_text(encoding="utf-8"))["step"] == 2
    )
    assert main([*common, "--steps", "3", "--resume"]) == 0
    assert (
        json.loads((out / "last" / "training_state.json").read_text(encoding="utf-8"))["step"] == 3
    )


# ------------------------------------------------------------------- cohort segmentation


@pytest.mark.slow
def test_torchrun_cohort_writes_each_output_once_and_resumes(tmp_path):
    import nibabel as nib

    from napari_medsegdiff.checkpoints import save_model
    from napari_medsegdiff.cohort import segment_cohort
    from napari_medsegdiff.model import build_model

    torch.manual_seed(0)
    model = tmp_path / "model"
    save_model(model, build_model(preset("tiny")).state_dict(), preset("tiny"))
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        _write_nifti(scans / f"p{i}.nii.gz", rng.normal(0, 1, (32, 32, 3)).astype(np.float32))
    out, ref = tmp_path / "out", tmp_path / "ref"
    args = [
        "segment",
        str(scans),
        "-o",
        str(out),
        "--model",
        str(model),
        "--ensemble",
        "2",
        "--steps",
        "2",
        "--seed",
        "5",
        "--chunk-size",
        "2",
        "--device",
        "cpu",
        "--variance",  # alone, as README and DISTRIBUTED.md write it
    ]
    stdout = _torchrun(args)
    # Totals over ranks: 4 writes for 4 scans, so no scan was written twice.
    assert "segmented 4 scan(s), skipped 0" in stdout and stdout.count("segmented") == 1
    names = sorted(f"p{i}_{kind}.nii.gz" for i in range(4) for kind in ("mask", "variance"))
    assert sorted(p.name for p in out.iterdir()) == names

    summary = segment_cohort(
        scans,
        ref,
        sampler=SamplerConfig(steps=2, ensemble=2, seed=5, chunk_size=2),
        model=str(model),
        device="cpu",
        variance=True,
    )
    assert summary["written"] == 4 and len(summary["mine"]) == 4

    def same(name: str) -> None:
        mine, theirs = nib.load(out / name).get_fdata(), nib.load(ref / name).get_fdata()
        if "mask" in name:
            np.testing.assert_array_equal(mine, theirs, err_msg=name)
        else:
            np.testing.assert_allclose(mine, theirs, atol=1e-6, err_msg=name)

    for name in names:
        same(name)

    # An interrupted run: p2 lost its mask. --resume redoes p2 only, on whichever rank.
    (out / "p2_mask.nii.gz").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    stdout = _torchrun([*args, "--resume"])
    assert "segmented 1 scan(s), skipped 3" in stdout
    assert sorted(p.name for p in out.iterdir()) == names
    for name, stamp in stamps.items():
        if not name.startswith("p2_"):
            assert (out / name).stat().st_mtime_ns == stamp, f"{name} was rewritten"
    same("p2_mask.nii.gz")
    same("p2_variance.nii.gz")
