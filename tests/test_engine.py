"""The trainer through the published scripts: output layout, results, seeds, re-runs and config clashes."""

import argparse
import glob
import inspect
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings

import pytest
import torch
import yaml

from lib.config import REPO_ROOT, get_cfg, load_config
from lib.datasets import build_dataset
from lib.datasets.sampler import EpochBatchSampler
from lib.distillers import build_distiller
from lib.distillers.base import Distiller, Vanilla
from lib.engine import resume, trainer
from lib.engine.checkpoint import ExperimentLock
from lib.engine.setup import experiment_name
from lib.engine.trainer import (
    NonFiniteLoss,
    StepMonitor,
    build_loader,
    format_duration,
    format_table,
    place_for_training,
    summarize_runs,
)
from lib.models.model_builder import build_model
from lib.utils.errors import UserError
from lib.utils.processes import process_ended

from .conftest import one_error_line, run_in_process, save_network

TEACHER = "tools_0_base/train_teacher_1run.py"
STUDENT = "tools_0_base/train_student_5runs.py"
KD = "tools_1_ts/train_kd_5runs.py"


# 0 workers: the items are made in this process, beside the global RNG; "device" cuts its batches itself, in
# this process, with no workers. The kill-and-resume test of test_resume.py runs the tensor pipeline with workers.
@pytest.mark.parametrize("pipeline, workers", [("tensor", 0), ("tensor", 2), ("device", 0)])
def test_one_training_stream_serves_every_epoch_as_a_resumed_run_sees_it_and_leaves_the_global_rng(
        tiny_cub, write_config, pipeline, workers):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "TRAIN": {"BATCH_SIZE": 5}}, tiny_cub)
    cfg = load_config(argparse.Namespace(config_file=config, opts=["BASIC.NUM_WORKERS", workers,
                                                                   "DATA.PIPELINE", pipeline]))
    train_set = build_dataset(cfg, is_train=True)
    loader = build_loader(cfg, train_set, True, torch.device("cpu"))
    loader.batch_sampler.set_epochs([11, 12])
    rng = torch.get_rng_state()
    stream = list(loader)  # 16 images: batches of 5, 5, 5, 1 per epoch
    assert torch.equal(torch.get_rng_state(), rng)  # dropout in a resumed run draws what it would have drawn
    assert [len(b["target"]) for b in stream] == [5, 5, 5, 1] * 2
    resumed = build_loader(cfg, train_set, True, torch.device("cpu"))
    resumed.batch_sampler.set_epochs([12])  # a run resumed after the first epoch
    for a, b in zip(stream[4:], resumed, strict=True):
        assert torch.equal(a["image_large"], b["image_large"]) and torch.equal(a["target"], b["target"])


def test_teacher_run_writes_the_checkpoint_path_the_distillation_configs_name(tiny_teacher):
    proc, exp = tiny_teacher.proc, tiny_teacher.exp  # the published teacher command, run once for the session
    best = torch.load(exp / "ckpt" / "model_best.pth", map_location="cpu", weights_only=False)
    assert {"epoch", "state_dict", "best_acc"} <= set(best)
    # What the distillation scripts check a teacher against (and eval.py reads).
    assert (best["arch"], best["num_classes"], best["input_size"]) == ("resnet18", 4, 64)
    build_model("resnet18", 4, False).load_state_dict(best["state_dict"])
    for name in ("config.yaml", "train.log", "results.json"):
        assert (exp / name).is_file(), name
    # Each epoch's line says when the run will end (from the mean epoch time), except the last.
    epoch_lines = [line for line in (exp / "train.log").read_text().splitlines() if "run 0 epoch " in line
                   and "/2:" in line]
    assert len(epoch_lines) == 2 and ", run 0 ends in ~" in epoch_lines[0], epoch_lines
    assert "ends in" not in epoch_lines[1] and epoch_lines[1].endswith("s]"), epoch_lines
    assert glob.glob(str(exp / "log" / "events.out.tfevents.*"))
    stats = [json.loads(line) for line in (exp / "log" / "stats.jsonl").read_text().splitlines()]
    assert [s["epoch"] for s in stats] == [1, 2]
    assert [s["lr"] for s in stats] == pytest.approx([0.01, 0.001])  # SOLVER.LR_STEPS [1], LR_DECAY_FACTOR 0.1
    results = json.loads((exp / "results.json").read_text())
    assert [r["seed"] for r in results["runs"]] == [0]
    assert results["best_acc_mean"] == results["runs"][0]["best_acc"] == best["best_acc"]
    assert "best_acc" in proc.stdout and "±" in proc.stdout
    if not torch.cuda.is_available():
        assert "CUDA is not available" in proc.stdout + proc.stderr


def test_student_runs_are_seeded_independently_and_summarised(tiny_cub, write_config, tmp_path, monkeypatch):
    config = write_config({"MODEL": {"ARCH": "vit_tiny_patch16_32"},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}, "BASIC": {"SEED": 5}}, tiny_cub)
    assert run_in_process(STUDENT, config, "MODEL.ARCH", "vit_tiny_patch16_32", "BASIC.GPU_ID", "[0]",
                          monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "2runs_vit_tiny_patch16_32_32_seed5_0.01"
    results = json.loads((exp / "results.json").read_text())
    assert [(r["run"], r["seed"]) for r in results["runs"]] == [(0, 5), (1, 6)]
    for key in ("best_acc_mean", "best_acc_std", "last_acc_mean", "last_acc_std"):
        assert key in results
    for run in (0, 1):
        assert (exp / "ckpt" / f"run{run}" / "model_best.pth").is_file()
        assert glob.glob(str(exp / "log" / f"run{run}" / "events.out.tfevents.*"))
    # Different seeds give different students.
    w0 = torch.load(exp / "ckpt" / "run0" / "last.pth", weights_only=False)["student"]
    w1 = torch.load(exp / "ckpt" / "run1" / "last.pth", weights_only=False)["student"]
    assert not torch.equal(w0["head.weight"], w1["head.weight"])


def test_run_i_starts_from_the_weights_that_seed_plus_i_initialises(tiny_cub, write_config, tmp_path, monkeypatch):
    from lib.engine.setup import seed_everything

    built = []

    def recording_build(cfg, method, teacher=None):
        distiller = build_distiller(cfg, method, teacher)
        built.append({k: v.clone() for k, v in distiller.student.state_dict().items()})
        return distiller

    def expected_weights(run):
        seed_everything(3 + run)
        return build_distiller(load_config(argparse.Namespace(config_file=config, opts=[])), "single").student

    monkeypatch.setattr(trainer, "build_distiller", recording_build)
    # Each epoch's data order and crops come from its own seed, epoch_seed(BASIC.SEED + run, epoch).
    orders = []
    real_set_epochs = EpochBatchSampler.set_epochs
    monkeypatch.setattr(EpochBatchSampler, "set_epochs", lambda self, seeds: orders.append(list(seeds))
                        or real_set_epochs(self, seeds))
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 2}, "BASIC": {"SEED": 3}},
                          tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert orders == [[trainer.epoch_seed(3 + run, 1), trainer.epoch_seed(3 + run, 2)] for run in (0, 1)]
    assert len(set(orders[0] + orders[1])) == 4
    assert len(built) == 2
    for run, weights in enumerate(built):
        for key, value in expected_weights(run).state_dict().items():
            assert torch.equal(weights[key], value), (run, key)
    # Run 1 killed before its first checkpoint, run 0 finished: the re-run starts run 1 from seed 4's weights, not
    # from run 0's (which the network built before the runs once had: a near-copy, and a std too small).
    exp = tmp_path / "ckpt" / "cub" / "2runs_resnet18_64_seed3_0.01"
    shutil.rmtree(exp / "ckpt" / "run1")
    (exp / "results.json").unlink()
    built.clear()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert len(built) == 1
    for key, value in expected_weights(1).state_dict().items():
        assert torch.equal(built[0][key], value), key


def test_a_run_that_never_scores_still_writes_its_best_checkpoint(tiny_cub, write_config, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "test_epoch", lambda *args: {"test_top1": 0.0, "test_top5": 0.0, "test_loss": 9.0})
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 2}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    best = torch.load(exp / "ckpt" / "model_best.pth", weights_only=False)
    assert (best["epoch"], best["best_acc"]) == (1, 0.0)
    assert json.loads((exp / "results.json").read_text())["runs"][0]["best_epoch"] == 1


def test_experiment_folders_are_named_after_the_small_crop_and_both_networks():
    cfg = get_cfg()
    cfg.MODEL.ARCH, cfg.MODEL.ARCH_T, cfg.MODEL.ARCH_S = "resnet18", "resnet50", "vit_tiny_patch16_56"
    cfg.DATA.CROP_SIZE, cfg.DATA.LESSEN_RATIO, cfg.BASIC.SEED, cfg.SOLVER.START_LR = 224, 4.0, 2, 0.05
    assert experiment_name(cfg, "single", 5) == "5runs_resnet18_56_seed2_0.05"
    assert experiment_name(cfg, "isrd", 5) == "5runs_isrd_resnet50_224_vit_tiny_patch16_56_56_seed2_0.05"


def test_sgd_gets_the_configs_learning_rate_momentum_and_weight_decay():
    cfg = get_cfg()
    cfg.MODEL.ARCH, cfg.DATA.NUM_CLASSES = "resnet18", 4
    cfg.SOLVER.START_LR, cfg.SOLVER.MUMENTUM, cfg.SOLVER.WEIGHT_DECAY = 0.05, 0.8, 3e-4
    optimizer, _ = place_for_training(cfg, build_distiller(cfg, "single"), torch.device("cpu"))
    assert {k: optimizer.defaults[k] for k in ("lr", "momentum", "weight_decay")} == {
        "lr": 0.05, "momentum": 0.8, "weight_decay": 3e-4}


def _isrd_config(tmp_path, kdtype: str = "kd"):
    """A tiny ISRD (or, with kdtype, feature KD) config: resnet18@64 teacher of random weights -> resnet18@32."""
    teacher = tmp_path / "teacher.pth"
    save_network(teacher, "resnet18", arch="resnet18")
    cfg = get_cfg()
    cfg.DATA.DATASET, cfg.DATA.DATADIR, cfg.DATA.NUM_CLASSES = "cub", "unused", 4
    cfg.DATA.CROP_SIZE, cfg.DATA.RESIZE_SIZE, cfg.DATA.LESSEN_RATIO, cfg.FSR.ETA = 64, 72, 2.0, 10.0
    cfg.MODEL.ARCH_T, cfg.MODEL.ARCH_S, cfg.MODEL.MODELDICT_T, cfg.MODEL.KDTYPE = "resnet18", "resnet18", str(
        teacher), kdtype
    return cfg


@pytest.mark.parametrize("method, extra", [("isrd", "decoder"), ("ickd", "criterion")])
def test_the_optimiser_updates_the_student_and_the_methods_trained_modules_never_the_teacher(method, extra,
                                                                                            tmp_path):
    distiller = build_distiller(_isrd_config(tmp_path, "ickd" if method == "ickd" else "kd"), method)
    optimizer, _ = place_for_training(get_cfg(), distiller, torch.device("cpu"))
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    expected = {id(p) for module in (distiller.student, distiller.extra_modules()[extra]) for p in module.parameters()}
    assert updated == expected  # the ISRD decoder and ICKD's embedding learn too; the frozen teacher does not


def test_scoring_the_test_split_puts_the_student_in_eval_mode_and_leaves_its_batchnorm_statistics_alone():
    torch.manual_seed(0)
    distiller = Vanilla(build_model("resnet18", 4, False)).train()
    before = {k: v.clone() for k, v in distiller.state_dict().items()}
    batches = [{"image": torch.randn(4, 3, 32, 32), "target": torch.arange(4)}] * 2
    trainer.test_epoch(distiller, batches, lambda batch: batch, get_cfg(), torch.device("cpu"))
    assert not distiller.student.training
    after = distiller.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running means and variances included


def test_a_students_best_checkpoint_records_the_students_input_size_not_the_teachers(tmp_path):
    cfg = _isrd_config(tmp_path)
    distiller = build_distiller(cfg, "isrd")
    ckpt = trainer.best_checkpoint(argparse.Namespace(cfg=cfg, method="isrd"), distiller, 3, 50.0)
    assert (ckpt["arch"], ckpt["input_size"], ckpt["epoch"], ckpt["best_acc"]) == ("resnet18", 32, 3, 50.0)
    assert set(ckpt["decoder"]) == set(distiller.decoder.state_dict())


@pytest.mark.parametrize("amp, dtype", [("none", torch.float32), ("bf16", torch.bfloat16)])
def test_train_amp_sets_the_dtype_the_forward_computes_in(amp, dtype):
    cfg = get_cfg()
    cfg.TRAIN.AMP = amp
    with trainer.autocast(cfg, torch.device("cpu")):
        assert torch.nn.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8)).dtype == dtype


def test_each_run_and_each_epoch_sees_its_own_data_order(tiny_cub, write_config):
    cfg = load_config(argparse.Namespace(config_file=write_config({}, tiny_cub), opts=[]))
    loader = build_loader(cfg, build_dataset(cfg, is_train=True), True, torch.device("cpu"))
    orders = {}
    for run_seed, epoch in ((0, 1), (1, 1), (0, 2)):
        loader.batch_sampler.set_epochs([trainer.epoch_seed(run_seed, epoch)])
        orders[run_seed, epoch] = [index for batch in loader.batch_sampler for index, _ in batch]
    assert orders[0, 1] != orders[1, 1] and orders[0, 1] != orders[0, 2]
    assert sorted(orders[0, 1]) == sorted(orders[1, 1])


def test_no_two_runs_or_epochs_share_an_epoch_seed():
    # An epoch seed of run seed + epoch would give run 1 at epoch e exactly run 0's data at epoch e + 1: five
    # shifted copies of one augmentation stream, and an understated std over runs.
    seeds = {trainer.epoch_seed(run_seed, epoch) for run_seed in range(5) for epoch in range(1, 201)}
    assert len(seeds) == 5 * 200
    assert trainer.epoch_seed(1, 1) != trainer.epoch_seed(0, 2)


# A resnet18 student at 32 px, one run (its experiment folder: 1runs_resnet18_32_seed0_0.01).
ONE_RUN = {"MODEL": {"ARCH": "resnet18"}, "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}, "BASIC": {"NUM_RUNS": 1}}
ONE_RUN_EXP = os.path.join("ckpt", "cub", "1runs_resnet18_32_seed0_0.01")


def test_a_runs_last_acc_is_its_last_epochs_and_best_acc_its_first_maximum(tiny_cub, write_config, tmp_path,
                                                                          monkeypatch):
    scores = iter([30.0, 50.0, 50.0, 40.0])
    monkeypatch.setattr(trainer, "test_epoch",
                        lambda *args: {"test_top1": next(scores), "test_top5": 0.0, "test_loss": 1.0})
    config = write_config({**ONE_RUN, "SOLVER": {"NUM_EPOCHS": 4}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    results = json.loads((tmp_path / ONE_RUN_EXP / "results.json").read_text())
    (run,) = results["runs"]
    assert (run["best_acc"], run["best_epoch"], run["last_acc"]) == (50.0, 2, 40.0)
    assert (results["best_acc_mean"], results["last_acc_mean"]) == (50.0, 40.0)


def test_a_one_epoch_run_reports_that_epoch_as_its_best_and_its_last(tiny_cub, write_config, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "test_epoch", lambda *args: {"test_top1": 30.0, "test_top5": 0.0, "test_loss": 1.0})
    config = write_config({**ONE_RUN, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    (run,) = json.loads((tmp_path / ONE_RUN_EXP / "results.json").read_text())["runs"]
    assert (run["best_acc"], run["best_epoch"], run["last_acc"]) == (30.0, 1, 30.0)


def test_warnings_of_the_checks_print_once_they_pass_and_reach_train_log(tiny_cub, write_config, tmp_path, monkeypatch,
                                                                         capsys):
    ignored = tmp_path / "imagenet.pth"
    ignored.write_bytes(b"never read")
    config = write_config({**ONE_RUN, "SOLVER": {"NUM_EPOCHS": 1}, "BASIC": {"NUM_RUNS": 2}}, tiny_cub)
    # Pretraining is off, so the weight file is ignored; a baseline reads no MODEL.MODELDICT_S; GPU 0 is asked for,
    # and there is no CUDA here. Each run builds its network again, and warns once all the same.
    assert run_in_process(STUDENT, config, "MODEL.PRETRAIN_FILE", str(ignored), "BASIC.GPU_ID", "[0]",
                          "MODEL.MODELDICT_S", "student.pth", monkeypatch=monkeypatch) == 0
    warnings = [f"warning: weight file {ignored} for resnet18 is ignored: pretraining is off",
                "warning: MODEL.MODELDICT_S student.pth is ignored: a teacher or student baseline trains MODEL.ARCH "
                "from MODEL.PRETRAIN(_FILE); the distillation scripts read the _T, _A and _S keys",
                "warning: CUDA is not available; running on the CPU"]
    out = capsys.readouterr().out.splitlines()
    train_log = tmp_path / ONE_RUN_EXP.replace("1runs", "2runs") / "train.log"
    log = [line.split(" ", 2)[2] for line in train_log.read_text().splitlines()]
    for lines in (out, log):
        assert all(sum(line.startswith(w) for line in lines) == 1 for w in warnings)  # held, then logged once
        starts = [next(i for i, line in enumerate(lines) if line.startswith(w)) for w in warnings]
        assert starts and max(starts) < next(i for i, line in enumerate(lines) if line.startswith("command: "))


def test_the_first_runs_networks_are_freed_before_the_next_run_trains(tiny_cub, write_config, monkeypatch):
    # Run 0 trains the distiller built while the config was checked; on a GPU it (and its gradients) must not stay
    # in memory while the runs after it train.
    import gc
    import weakref

    real, seen = trainer.train_run, []

    def train_run(exp, run, device, distiller=None):
        gc.collect()
        seen.append((run, distiller is not None, [ref() is not None for ref in refs]))
        return real(exp, run, device, distiller)

    refs = []
    monkeypatch.setattr(trainer, "train_run", train_run)
    monkeypatch.setattr(trainer, "build_distiller", lambda *args: refs.append(weakref.ref(d := build_distiller(*args)))
                        or d)
    config = write_config({**ONE_RUN, "SOLVER": {"NUM_EPOCHS": 1}, "BASIC": {"NUM_RUNS": 2}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert seen == [(0, True, [True]), (1, False, [False])]  # run 1 builds its own; run 0's (the only one) is gone


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_the_grad_scaler_is_on_exactly_under_fp16(amp):
    # fp16's small exponent range flushes small gradients (the KD and ISRD terms) to zero without a loss scale;
    # bf16 has fp32's range and needs none.
    cfg = get_cfg()
    cfg.TRAIN.AMP = amp
    _, scaler = trainer.place_for_training(cfg, Vanilla(torch.nn.Linear(2, 2)), torch.device("cpu"))
    assert scaler.is_enabled() == (amp == "fp16")


def test_the_fused_sgd_of_gpus_steps_as_the_plain_one_after_a_first_step_skipped_for_an_fp16_overflow():
    # torch's fused SGD leaves its momentum buffers uninitialised when the grad scaler skips its first step: the
    # next step added garbage (weights of 1e10 in one reproduction). fp16 overflows at the initial scale, so a
    # fresh fp16 run on a GPU met it at once. The fused kernel runs on the CPU too.
    cfg = get_cfg()
    gradients = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    gradients[0, 0] = float("inf")  # step 1 overflows
    weights = []
    for fused in (False, True):
        weight = torch.nn.Parameter(torch.ones(1000))
        optimizer = trainer.build_optimizer(cfg, [weight], fused=fused)
        scaler = torch.amp.GradScaler("cpu")
        for gradient in gradients:
            optimizer.zero_grad()
            scaler.scale((weight * gradient).sum()).backward()
            scaler.step(optimizer)
            scaler.update()
        weights.append(weight.detach())
    assert optimizer.param_groups[0]["fused"] and torch.equal(weights[1], weights[0])
    assert not torch.equal(weights[0], torch.ones(1000))  # steps 2 and 3 moved it


def test_the_logged_command_line_is_quoted_so_that_it_can_be_pasted_back_into_a_shell(monkeypatch):
    import shlex

    from lib.engine.setup import environment_lines

    argv = ["tools_1_ts/train_isrd_5runs.py", "--config_file", "my configs/isrd.yaml", "BASIC.OUTPUT_ROOT", "'2024'"]
    monkeypatch.setattr(sys, "argv", argv)
    line = environment_lines([torch.device("cpu")])[0]
    assert line.startswith("command: ") and shlex.split(line[len("command: "):])[1:] == argv


def test_the_log_names_the_card_the_run_trains_on_not_gpu_0(monkeypatch):
    from lib.engine.setup import environment_lines

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: {2: "NVIDIA H200"}.get(device.index, "other"))
    assert environment_lines([torch.device("cuda", 2)])[-1] == "cuda device: cuda:2 NVIDIA H200"
    assert environment_lines([torch.device("cpu")] * 2)[-1] == "cuda device: none"
    # Runs in parallel, one per GPU: each card once.
    runs = [torch.device("cuda", 2), torch.device("cuda", 0), torch.device("cuda", 2)]
    assert environment_lines(runs)[-1] == "cuda device: cuda:2 NVIDIA H200, cuda:0 other"


def test_the_epoch_means_weight_each_step_by_its_batch():
    monitor = StepMonitor(torch.device("cpu"), "run 0")
    monitor.push({"loss_ce": torch.tensor(1.0)}, 8, 1, 1)
    monitor.push({"loss_ce": torch.tensor(4.0)}, 2, 1, 2)  # an epoch's short last batch
    assert monitor.means() == {"loss_ce": pytest.approx((8 * 1.0 + 2 * 4.0) / 10)}


def test_the_test_pass_scores_top1_top5_and_ce():
    class Fixed(torch.nn.Module):  # logits chosen per image: class 0 ranked first, then 1, 2, ...
        def forward(self, image):
            return torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]).expand(image.shape[0], 6)

    cfg = get_cfg()
    batch = {"image": torch.zeros(4, 3, 8, 8), "target": torch.tensor([0, 1, 4, 5])}
    stats = trainer.test_epoch(Vanilla(Fixed()), [batch], lambda b: b, cfg, torch.device("cpu"))
    ce = torch.nn.functional.cross_entropy(torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]] * 4),
                                           batch["target"]).item()
    assert stats["test_top1"] == 25.0 and stats["test_top5"] == 75.0
    assert stats["test_loss"] == pytest.approx(ce)


def test_a_dataset_moved_or_copied_elsewhere_is_the_same_experiment_and_other_data_is_not(tiny_cub, write_config,
                                                                                          tmp_path, monkeypatch,
                                                                                          capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    # A scheduler's job that copies the data to its node's own disk first: each resume names another folder.
    copy = tmp_path / "scratch" / "job2" / "cub"
    shutil.copytree(tiny_cub, copy)
    (exp / "results.json").unlink()
    (exp / "ckpt" / "result.json").unlink()  # stopped after its last epoch was saved: resumed from the copy
    capsys.readouterr()
    assert run_in_process(TEACHER, config, "DATA.DATADIR", f"'{copy}'", monkeypatch=monkeypatch) == 0
    assert "run 0: resuming after epoch 1" in capsys.readouterr().out
    assert run_in_process(TEACHER, config, "DATA.DATADIR", f"'{copy}'", monkeypatch=monkeypatch) == 0
    assert "is finished" in capsys.readouterr().out
    # Another dataset in the same layout (a label edited in the copy), or no dataset there: another config.
    labels = (copy / "image_class_labels.txt").read_text().splitlines()
    image_id, label = labels[0].split()
    (copy / "image_class_labels.txt").write_text("\n".join([f"{image_id} {int(label) % 4 + 1}"] + labels[1:]) + "\n")
    for datadir, what in ((copy, "which holds other images, labels or file sizes"),
                          (tmp_path / "none", "which is not a dataset of this config")):
        assert run_in_process(TEACHER, config, "DATA.DATADIR", f"'{datadir}'", monkeypatch=monkeypatch) == 2
        assert capsys.readouterr().err == (
            f"error: {exp} holds an experiment with another config: DATA.DATADIR ('{tiny_cub}' -> '{datadir}', "
            f"{what}). Re-run with the same settings to resume; to keep both (a sweep, say), give this one its own "
            "BASIC.OUTPUT_ROOT; or add BASIC.FRESH_START True to move the old one aside and start over\n")
    # With another setting beside it, the folder is simply another config (its data is not read).
    assert run_in_process(TEACHER, config, "DATA.DATADIR", f"'{copy}'", "SOLVER.WEIGHT_DECAY", "0.001",
                          monkeypatch=monkeypatch) == 2
    assert f"DATA.DATADIR ('{tiny_cub}' -> '{copy}'); SOLVER.WEIGHT_DECAY" in capsys.readouterr().err


# A 1-run resnet18@32 experiment of one epoch (ONE_RUN_EXP).
ONE_EPOCH = {**ONE_RUN, "SOLVER": {"NUM_EPOCHS": 1}}


def _interrupted(*args, **kwargs):
    """trainer.train_epoch stopped by Ctrl-C at once: the run leaves its folders and no saved epoch."""
    raise KeyboardInterrupt


def test_a_teacher_and_a_one_run_student_baseline_of_the_same_network_do_not_take_each_others_folder(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # Both scripts name a 1-run experiment of resnet18@32, seed 0, lr 0.01 alike; one keeps its run in ckpt/, the
    # other in ckpt/run0/. The teacher command said "is finished" with no ckpt/model_best.pth for distillation.
    config = write_config(ONE_EPOCH, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / ONE_RUN_EXP
    capsys.readouterr()
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err == (
        f"error: {exp} holds a 1-run experiment of a multi-run script (its run in ckpt/run0/), the same networks, "
        "sizes and seed as this one-run script trains, which would put its run in ckpt/ itself; where its checkpoint "
        f"is wanted, give {exp / 'ckpt' / 'run0' / 'model_best.pth'}, or give this command its own "
        "BASIC.OUTPUT_ROOT\n")
    # Distilling from <folder>/ckpt/model_best.pth names the run's file.
    kd = write_config({"MODEL": {"ARCH_T": "resnet18", "ARCH_S": "resnet18",
                                 "MODELDICT_T": str(exp / "ckpt" / "model_best.pth")},
                       "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32, "LESSEN_RATIO": 2.0}}, tiny_cub)
    assert run_in_process(KD, kd, monkeypatch=monkeypatch) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: teacher checkpoint MODEL.MODELDICT_T not found: {exp / 'ckpt' / 'model_best.pth'} ({exp / 'ckpt'} "
        "holds the runs of a multi-run experiment, each with its own model_best.pth: give one of them, e.g. "
        f"{exp / 'ckpt' / 'run0' / 'model_best.pth'})")
    # The other way round: a teacher's run, then the student baseline with BASIC.NUM_RUNS 1.
    other = write_config(ONE_EPOCH, tiny_cub, str(tmp_path / "other"))
    assert run_in_process(TEACHER, other, monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert run_in_process(STUDENT, other, monkeypatch=monkeypatch) == 2
    assert "holds the run of a one-run script (a teacher's or a TAS assistant's: in ckpt/ itself)" in one_error_line(
        capsys.readouterr().err)
    # An attempt of the other script that saved no epoch (killed in epoch 1: ckpt/run0/ made, nothing in it) is not
    # in the way: it is moved aside as any such attempt.
    third = write_config(ONE_EPOCH, tiny_cub, str(tmp_path / "third"))
    train_epoch = trainer.train_epoch
    monkeypatch.setattr(trainer, "train_epoch", _interrupted)
    assert run_in_process(STUDENT, third, monkeypatch=monkeypatch) == 130
    empty = tmp_path / "third" / os.path.relpath(ONE_RUN_EXP, "ckpt")
    assert (empty / "ckpt" / "run0").is_dir() and not (empty / "ckpt" / "run0" / "last.pth").exists()
    monkeypatch.setattr(trainer, "train_epoch", train_epoch)
    assert run_in_process(TEACHER, third, monkeypatch=monkeypatch) == 0
    assert (empty / "ckpt" / "model_best.pth").is_file()


def test_a_new_experiment_names_the_finished_runs_of_the_same_config_that_another_run_count_holds(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # 5 runs done, then BASIC.NUM_RUNS 10: the new folder trains runs 0..4 again (the same seeds); the note says how
    # to reuse them, and following it gives the same results.
    config = write_config({**ONE_EPOCH, "BASIC": {"NUM_RUNS": 2}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    two = tmp_path / "ckpt" / "cub" / "2runs_resnet18_32_seed0_0.01"
    train_epoch = trainer.train_epoch
    monkeypatch.setattr(trainer, "train_epoch", _interrupted)
    capsys.readouterr()
    assert run_in_process(STUDENT, config, "BASIC.NUM_RUNS", "3", monkeypatch=monkeypatch) == 130
    assert (f"note: {two} holds finished runs 0, 1 of this same config (run i has seed BASIC.SEED + i in both), "
            "which this experiment trains again; to reuse them instead, stop it and copy their ckpt/run<i>/ and "
            "log/run<i>/ folders into its own, then re-run") in capsys.readouterr().out
    three = tmp_path / "ckpt" / "cub" / "3runs_resnet18_32_seed0_0.01"
    for kind in ("ckpt", "log"):
        for run in (0, 1):
            shutil.rmtree(three / kind / f"run{run}", ignore_errors=True)
            shutil.copytree(two / kind / f"run{run}", three / kind / f"run{run}")
    monkeypatch.setattr(trainer, "train_epoch", train_epoch)
    assert run_in_process(STUDENT, config, "BASIC.NUM_RUNS", "3", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert "run 0 already finished" in out and "run 1 already finished" in out and "note:" not in out
    rows = json.loads((three / "results.json").read_text())["runs"]
    assert rows[:2] == json.loads((two / "results.json").read_text())["runs"] and rows[2]["seed"] == 2
    # Runs of another config beside it (another weight decay, the same folder name but for the count) are not named.
    assert run_in_process(STUDENT, config, "BASIC.NUM_RUNS", "1", "SOLVER.WEIGHT_DECAY", "0.001",
                          monkeypatch=monkeypatch) == 0
    assert "note:" not in capsys.readouterr().out


def test_rerunning_a_finished_experiment_prints_results_and_rewrites_nothing(tiny_cub, write_config, tmp_path,
                                                                           monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    stamps = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(exp / "**" / "*"), recursive=True)}
    capsys.readouterr()
    # Neither the workers nor BASIC.NUM_RUNS (the teacher's script always trains one run) make it another experiment.
    assert run_in_process(TEACHER, config, "BASIC.NUM_WORKERS", "1", "BASIC.NUM_RUNS", "5",
                          monkeypatch=monkeypatch) == 0
    assert "is finished" in capsys.readouterr().out
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(str(exp / "**" / "*"), recursive=True)} == stamps


def test_an_experiment_saved_before_a_key_existed_counts_it_at_its_default(tiny_cub, write_config, tmp_path,
                                                                          monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    saved = yaml.safe_load((exp / "config.yaml").read_text())
    del saved["DKD"]["RELEASE_WARMUP"]  # as written by a version of the code before the key existed
    (exp / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    assert "is finished" in capsys.readouterr().out
    assert run_in_process(TEACHER, config, "DKD.RELEASE_WARMUP", "True", monkeypatch=monkeypatch) == 2
    assert "another config: DKD.RELEASE_WARMUP (absent, i.e. the default False -> True)" in capsys.readouterr().err


def test_a_different_config_in_the_same_directory_is_refused_naming_the_keys(tiny_cub, write_config, tmp_path,
                                                                             monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    saved = (exp / "config.yaml").read_text()
    capsys.readouterr()
    assert run_in_process(TEACHER, config, "SOLVER.WEIGHT_DECAY", "0.001", monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err == (
        f"error: {exp} holds an experiment with another config: SOLVER.WEIGHT_DECAY (0.0005 -> 0.001). Re-run with "
        "the same settings to resume; to keep both (a sweep, say), give this one its own BASIC.OUTPUT_ROOT; or add "
        "BASIC.FRESH_START True to move the old one aside and start over\n")
    assert (exp / "config.yaml").read_text() == saved
    # Its own output root keeps both.
    assert run_in_process(TEACHER, config, "SOLVER.WEIGHT_DECAY", "0.001", "BASIC.OUTPUT_ROOT", f"'{tmp_path}/wd'",
                          monkeypatch=monkeypatch) == 0
    kept = tmp_path / "wd" / "cub" / "1runs_resnet18_64_seed0_0.01" / "config.yaml"
    assert "WEIGHT_DECAY: 0.001" in kept.read_text()
    assert (exp / "config.yaml").read_text() == saved
    # The test batch size too: the test loss's rounding depends on it, so a resumed run would log other numbers.
    assert run_in_process(TEACHER, config, "TEST.BATCH_SIZE", "7", monkeypatch=monkeypatch) == 2
    assert "TEST.BATCH_SIZE" in capsys.readouterr().err
    # FRESH_START moves the old attempt aside and starts over.
    assert run_in_process(TEACHER, config, "SOLVER.WEIGHT_DECAY", "0.001", "BASIC.FRESH_START", "True",
                          monkeypatch=monkeypatch) == 0
    assert (tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01.old1" / "config.yaml").read_text() == saved
    assert "WEIGHT_DECAY: 0.001" in (exp / "config.yaml").read_text()
    # What that command did is not saved as a setting: the experiment's own config.yaml re-reports it.
    assert "FRESH_START: false" in (exp / "config.yaml").read_text()
    capsys.readouterr()
    assert run_in_process(TEACHER, str(exp / "config.yaml"), monkeypatch=monkeypatch) == 0
    assert "is finished" in capsys.readouterr().out
    assert not (tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01.old2").exists()


def test_an_attempt_that_saved_no_epoch_does_not_block_the_corrected_command(tiny_cub, write_config, tmp_path,
                                                                            monkeypatch, capsys):
    original = Distiller.forward_train

    def poisoned(self, image, image_large, target, epoch):
        logits, losses = original(self, image, image_large, target, epoch)
        return logits, {k: v * float("nan") for k, v in losses.items()}

    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    monkeypatch.setattr(Distiller, "forward_train", poisoned)
    assert run_in_process(TEACHER, config, "SOLVER.WEIGHT_DECAY", "0.001", monkeypatch=monkeypatch) == 2
    monkeypatch.setattr(Distiller, "forward_train", original)
    capsys.readouterr()
    # Corrected: the failed attempt (config.yaml and logs, no epoch saved) is moved aside, not a clash.
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    failed = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01.old1"
    assert "WEIGHT_DECAY: 0.001" in (failed / "config.yaml").read_text()
    assert "saved no epoch, was moved to" in capsys.readouterr().out


def test_a_path_spelt_another_way_a_runtime_knob_or_an_unused_key_is_the_same_experiment(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    capsys.readouterr()
    assert run_in_process(TEACHER, config, "BASIC.OUTPUT_ROOT", f"'{tmp_path}/./ckpt/'", "DATA.DATADIR",
                          f"'{tiny_cub}/../{os.path.basename(tiny_cub)}'", "BASIC.PARALLEL_RUNS", "2",
                          "DATA.GENERATE_IF_MISSING", "True", "FSR.BETA", "1.0", "ICKD.FEATDIM_S", "[64]",
                          "MODEL.PRETRAIN_T", "True", "TEST.CHECKPOINT", "x.pth", monkeypatch=monkeypatch) == 0
    assert "is finished" in capsys.readouterr().out


@pytest.mark.parametrize("name, content, words", [
    ("ckpt/last.pth", b"PK\x03\x04 truncated", ["last.pth", "damaged", "delete it to train run 0 again"]),
    ("results.json", b"{garbage", ["results.json", "damaged", "made again from the runs' result.json"]),
    # Valid JSON of another shape was a traceback when a finished experiment was re-run.
    ("results.json", b"[1, 2]", ["results.json holds a JSON list, not an object", "damaged"]),
    ("results.json", b"{}", ["results.json lacks a number in best_acc_mean", "damaged"]),
    ("ckpt/result.json", b'"x"', ["result.json holds a JSON str, not an object", "damaged", "summed up again"]),
    ("ckpt/result.json", b'{"run": 0}', ["result.json lacks a number in seed, best_acc, best_epoch, last_acc"]),
    ("config.yaml", b"", ["config.yaml", "damaged", "BASIC.FRESH_START True"]),
])
def test_a_damaged_file_of_an_experiment_is_one_line_naming_it(name, content, words, tiny_cub, write_config, tmp_path,
                                                              monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    if name.startswith("ckpt/"):  # an unfinished experiment: its runs are read, finished or not
        os.remove(exp / "results.json")
    if name == "ckpt/last.pth":  # an unfinished run resumes from last.pth
        os.remove(exp / "ckpt" / "result.json")
    (exp / name).write_bytes(content)
    log = (exp / "train.log").read_text()
    capsys.readouterr()
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert all(word in line for word in words), line
    assert "miniz" not in line  # torch's advice after the fact is left out
    assert (exp / "train.log").read_text() == log  # found before the run's header is logged


def test_saved_runs_without_their_config_yaml_are_refused_not_resumed_under_another_config(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # Nothing to compare the command's config with: before, every check was skipped and the old runs reported.
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    os.remove(exp / "config.yaml")
    results = (exp / "results.json").read_text()
    capsys.readouterr()
    assert run_in_process(TEACHER, config, "SOLVER.WEIGHT_DECAY", "0.001", monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"error: {exp} holds saved runs but no config.yaml to check this command's config against; "
                    "restore its config.yaml to resume, or add BASIC.FRESH_START True to start over")
    assert (exp / "results.json").read_text() == results and not (exp / "config.yaml").exists()
    assert run_in_process(TEACHER, config, "SOLVER.WEIGHT_DECAY", "0.001", "BASIC.FRESH_START", "True",
                          monkeypatch=monkeypatch) == 0
    assert (tmp_path / "ckpt" / "cub" / f"{exp.name}.old1" / "results.json").read_text() == results
    assert "WEIGHT_DECAY: 0.001" in (exp / "config.yaml").read_text()


def test_an_experiments_own_config_yaml_edited_since_it_started_is_refused_not_checked_against_itself(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # Given as the command's config, the edited file was compared with itself: the remaining runs trained with the
    # new values beside the runs trained with the old, in one results.json.
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    own = exp / "config.yaml"
    first = own.read_text()
    assert "NUM_EPOCHS: 1" in first and "BASIC.FRESH_START" not in first
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(exp / "**" / "*"), recursive=True)}
    own.write_text(first.replace("NUM_EPOCHS: 1", "NUM_EPOCHS: 2").replace("NUM_WORKERS: 0", "NUM_WORKERS: 1"))
    capsys.readouterr()
    assert run_in_process(TEACHER, str(own), monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"error: {own} has been edited since the experiment started (SOLVER.NUM_EPOCHS (1 -> 2)): its runs "
                    "were trained with the first values. Undo the edit to resume; to train the new values, give them "
                    "to a config of your own with its own BASIC.OUTPUT_ROOT, or add BASIC.FRESH_START True to move "
                    "this experiment aside and start over"), line
    # The same line for the original config (not the edited file) given as the command's; nothing is written.
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 2
    assert "has been edited since the experiment started (SOLVER.NUM_EPOCHS" in capsys.readouterr().err
    before[str(own)] = os.stat(own).st_mtime_ns
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(str(exp / "**" / "*"), recursive=True)} == before
    # An edit of a key that changes how fast it runs, not what it learns, and a comment, are no edit of the runs.
    own.write_text("# resumed on the cluster\n" + first.replace("NUM_WORKERS: 0", "NUM_WORKERS: 1"))
    assert run_in_process(TEACHER, str(own), monkeypatch=monkeypatch) == 0
    assert f"{exp} is finished; its results" in capsys.readouterr().out


def test_an_experiments_own_config_yaml_pointed_at_a_copy_of_its_data_resumes_and_at_other_data_is_refused(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    own = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01" / "config.yaml"
    first = own.read_text()
    copy = tmp_path / "scratch" / "cub"
    shutil.copytree(tiny_cub, copy)  # the dataset copied to a node's local disk, the config edited to name it
    own.write_text(first.replace(tiny_cub, str(copy)))
    capsys.readouterr()
    assert run_in_process(TEACHER, str(own), monkeypatch=monkeypatch) == 0
    assert "is finished; its results" in capsys.readouterr().out
    # Other images under the edited path: the saved runs were trained on the old ones.
    with open(copy / "train_test_split.txt") as f:
        lines = f.read().splitlines()
    image, split = lines[-1].split()
    lines[-1] = f"{image} {1 - int(split)}"  # one image moved to the other split
    (copy / "train_test_split.txt").write_text("\n".join(lines) + "\n")
    assert run_in_process(TEACHER, str(own), monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {own} has been edited since the experiment started (DATA.DATADIR ("), line
    assert f"-> '{copy}', which holds other images, labels or file sizes)" in line, line


def test_a_last_checkpoint_written_for_another_model_shape_is_one_line(tiny_cub, write_config, tmp_path,
                                                                      monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 2}}, tiny_cub)
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    os.remove(exp / "results.json")
    os.remove(exp / "ckpt" / "result.json")
    state = torch.load(exp / "ckpt" / "last.pth", weights_only=False)
    state["epoch"] = 1
    state["student"]["conv1.bias"] = torch.zeros(64)  # as an older version of a module (say, a conv with a bias)
    torch.save(state, exp / "ckpt" / "last.pth")
    capsys.readouterr()
    assert run_in_process(TEACHER, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "last.pth does not fit the model of this config" in line and "conv1.bias" in line, line
    assert "delete it to train run 0 again" in line


def test_a_teacher_file_that_changed_since_the_experiment_started_is_refused(tiny_cub, write_config, tmp_path,
                                                                           monkeypatch, capsys):
    teacher = tmp_path / "teacher.pth"
    save_network(teacher, "resnet18", arch="resnet18")
    config = write_config({"MODEL": {"ARCH_T": "resnet18", "ARCH_S": "resnet18", "MODELDICT_T": str(teacher)},
                           "DATA": {"LESSEN_RATIO": 2.0}, "SOLVER": {"NUM_EPOCHS": 1},
                           "BASIC": {"NUM_RUNS": 1}}, tiny_cub)
    assert run_in_process(KD, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_kd_resnet18_64_resnet18_32_seed0_0.01"
    inputs = json.loads((exp / "inputs.json").read_text())
    assert inputs["MODEL.MODELDICT_T"]["path"] == str(teacher) and len(inputs["MODEL.MODELDICT_T"]["sha256"]) == 64
    results = (exp / "results.json").read_text()
    # The same teacher file spelt another way (a scheduler's retry writing it absolutely, through a link) is the
    # same experiment: its content is what counts.
    os.symlink(teacher, tmp_path / "teacher_link.pth")
    # So is a copy of it elsewhere (moved, or copied to a node's own disk): its SHA-256 is the one recorded.
    shutil.copy(teacher, tmp_path / "moved.pth")
    for spelt in (f"{tmp_path}/./teacher.pth", str(tmp_path / "teacher_link.pth"), str(tmp_path / "moved.pth")):
        assert run_in_process(KD, config, "MODEL.MODELDICT_T", f"'{spelt}'", monkeypatch=monkeypatch) == 0
        assert "is finished" in capsys.readouterr().out
    # The teacher is trained again (another seed): re-running the finished experiment would report results that
    # were learnt from the old teacher.
    save_network(teacher, "resnet18", seed=1, arch="resnet18")
    capsys.readouterr()
    assert run_in_process(KD, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "MODEL.MODELDICT_T" in line and "has changed since" in line and "BASIC.FRESH_START True" in line
    assert run_in_process(KD, config, "MODEL.MODELDICT_T", f"'{tmp_path / 'moved.pth'}'", monkeypatch=monkeypatch) == 0
    assert "is finished" in capsys.readouterr().out  # the old teacher, moved: the experiment's own
    shutil.copy(teacher, tmp_path / "moved.pth")
    assert run_in_process(KD, config, "MODEL.MODELDICT_T", f"'{tmp_path / 'moved.pth'}'", monkeypatch=monkeypatch) == 2
    assert f"MODEL.MODELDICT_T ('{teacher}' -> '{tmp_path / 'moved.pth'}', which holds other weights)" in (
        capsys.readouterr().err)
    assert (exp / "results.json").read_text() == results
    assert run_in_process(KD, config, "BASIC.FRESH_START", "True", monkeypatch=monkeypatch) == 0
    assert json.loads((exp / "inputs.json").read_text()) != inputs


def test_a_dataset_that_changed_since_the_runs_started_on_it_is_refused(tiny_cub, write_config, tmp_path,
                                                                       monkeypatch, capsys):
    data = tmp_path / "cub"
    shutil.copytree(tiny_cub, data)
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1},
                           "BASIC": {"NUM_RUNS": 1}}, str(data))
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_64_seed0_0.01"
    saved = json.loads((exp / "inputs.json").read_text())["DATA.DATADIR"]
    assert saved["train"]["images"] == 16 and saved["test"]["images"] == 16 and saved["path"] == str(data)
    # Interrupted after its last epoch was saved: re-running resumes it; the same data passes the check.
    os.remove(exp / "results.json")
    os.remove(exp / "ckpt" / "run0" / "result.json")
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    os.remove(exp / "results.json")
    os.remove(exp / "ckpt" / "run0" / "result.json")
    # A training image moves to the test split (another train_test_split.txt): the runs were trained on the old one.
    split = (data / "train_test_split.txt").read_text().splitlines()
    first_train = next(i for i, line in enumerate(split) if line.endswith(" 1"))
    split[first_train] = split[first_train][:-1] + "0"
    (data / "train_test_split.txt").write_text("\n".join(split) + "\n")
    capsys.readouterr()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "training split of DATA.DATADIR" in line and "16 images then, 15 now" in line, line
    assert "BASIC.FRESH_START True" in line and not (exp / "results.json").exists()
    # Same files and counts, one label changed: still another dataset.
    (data / "train_test_split.txt").write_text("\n".join(split[:first_train] + [split[first_train][:-1] + "1"]
                                                        + split[first_train + 1:]) + "\n")
    labels = (data / "image_class_labels.txt").read_text().splitlines()
    image_id, label = labels[first_train].split()
    labels[first_train] = f"{image_id} {int(label) % 4 + 1}"
    (data / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "16 images, but other files, labels or file sizes" in line, line
    assert run_in_process(STUDENT, config, "BASIC.FRESH_START", "True", monkeypatch=monkeypatch) == 0
    assert json.loads((exp / "inputs.json").read_text())["DATA.DATADIR"]["train"] != saved["train"]
    # The test split is checked too: one test image relabelled.
    os.remove(exp / "results.json")
    os.remove(exp / "ckpt" / "run0" / "result.json")
    split = (data / "train_test_split.txt").read_text().splitlines()
    first_test = next(i for i, line in enumerate(split) if line.endswith(" 0"))
    labels = (data / "image_class_labels.txt").read_text().splitlines()
    image_id, label = labels[first_test].split()
    labels[first_test] = f"{image_id} {int(label) % 4 + 1}"
    (data / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    capsys.readouterr()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "the test split of DATA.DATADIR" in line and "16 images, but other files, labels" in line, line


def test_runs_started_with_another_training_cache_size_are_not_resumed_with_this_one(tiny_cub, write_config,
                                                                                      tmp_path, monkeypatch, capsys):
    # A 32 px baseline (RESIZE_SIZE 36) started before DATA.CACHE_SIZE 0 meant 256 px cropped a 36 px cache;
    # its inputs.json holds no train_cache_size.
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "SOLVER": {"NUM_EPOCHS": 1}, "BASIC": {"NUM_RUNS": 1},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01"
    inputs = json.loads((exp / "inputs.json").read_text())
    assert inputs["DATA.DATADIR"]["train_cache_size"] == 256
    del inputs["DATA.DATADIR"]["train_cache_size"]
    (exp / "inputs.json").write_text(json.dumps(inputs))
    os.remove(exp / "results.json")
    os.remove(exp / "ckpt" / "run0" / "result.json")
    capsys.readouterr()
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {exp} started with its training images cached at a shorter side of 36 px, and "
                           "this version of the code caches them at 256 px"), line
    assert run_in_process(STUDENT, config, "BASIC.FRESH_START", "True", monkeypatch=monkeypatch) == 0


_KILLED_HOLDING_THE_DONE_LOCK = """
import argparse, os, signal, sys
import torch
from lib.config import load_config
from lib.datasets import build_dataset
from lib.engine.trainer import build_loader
cfg = load_config(argparse.Namespace(config_file=sys.argv[1], opts=["BASIC.NUM_WORKERS", 2]))
if sys.argv[2] == "parent-has-one":  # made before the workers fork: theirs by inheritance, which they must not remove
    import multiprocessing.util
    multiprocessing.util.get_temp_dir()
batches = iter(build_loader(cfg, build_dataset(cfg, is_train=False), False, torch.device("cpu")))
next(batches)
print(" ".join(str(worker.pid) for worker in batches._workers), flush=True)
import multiprocessing
print(multiprocessing.current_process()._config.get("tempdir"), flush=True)  # the process's own, if it has one
batches._workers_done_event._cond.acquire()  # where a kill inside the loader's shutdown (Event.set) leaves it
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("temp_dir", ["workers-make-theirs", "parent-has-one"])
def test_loader_workers_exit_when_their_process_is_killed_even_holding_the_loaders_lock(temp_dir, tiny_cub,
                                                                                     write_config, tmp_path):
    # torch's worker, finding its parent gone, waits on the loader's "done" event: for ever when the parent was
    # killed holding that event's lock (a kill -9 during the loader's shutdown), with its copy of the cache.
    # Nor do they leave the /tmp/pymp-* folder each makes for handing batches over (os._exit skips its removal).
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub)
    temp = tmp_path / "tmp"
    temp.mkdir()
    # Read the workers' pids, then wait for the process, not for the end of its output: workers that outlive it
    # hold its stdout open.
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_HOLDING_THE_DONE_LOCK, config, temp_dir], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, "TMPDIR": str(temp)})
    workers = [int(pid) for pid in proc.stdout.readline().split()]
    own = proc.stdout.readline().strip()
    try:
        assert proc.wait(timeout=120) == -9 and len(workers) == 2, (tmp_path / "stderr.txt").read_text()[-3000:]
        deadline = time.time() + 20
        while not all(map(process_ended, workers)) and time.time() < deadline:
            time.sleep(0.2)
        assert all(map(process_ended, workers)), "a loader worker outlived its killed process"
        assert [path for path in glob.glob(str(temp / "pymp-*")) if path != own] == []
        assert (own != "None") == (temp_dir == "parent-has-one") and (own == "None" or os.path.isdir(own))
    finally:
        proc.stdout.close()
        for pid in itertools.filterfalse(process_ended, workers):
            os.kill(pid, 9)


def test_durations_in_log_lines_are_rounded_to_their_last_unit():
    assert [format_duration(s) for s in (0, 44.6, 59.6, 89, 3599, 3661, 86399, 90000, 200000)] == [
        "0s", "45s", "1m", "1m", "1h00m", "1h01m", "1d00h", "1d01h", "2d08h"]


def test_a_compiled_step_that_cannot_be_built_is_one_user_error_naming_the_cause_and_the_switch(monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "/nonexistent/g++"))  # a machine without a C++ compiler
    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # (a cached build would not need the compiler)
    cfg = get_cfg()
    cfg.TRAIN.COMPILE = True
    step = trainer.compile_step(cfg, lambda x: (x * 2).sin().sum())
    try:
        with pytest.raises(UserError) as err:
            step(torch.randn(8))
    finally:
        torch._dynamo.reset()
    assert str(err.value).startswith("TRAIN.COMPILE True: torch.compile (inductor) could not build the training "
                                     "step (InvalidCxxCompiler: No working C++ compiler")
    assert str(err.value).endswith("; install what it names (a C++ compiler on the CPU, Triton on a GPU), or set "
                                   "TRAIN.COMPILE False")


def test_each_epoch_gives_the_distiller_its_number_before_its_first_step():
    # (What a compiled DKD step reads its warm-up factor from: tests/test_distillers.py.)
    events = []
    weight = torch.nn.Parameter(torch.ones(1))

    class Recording(torch.nn.Module):
        def set_epoch(self, epoch):
            events.append(("set_epoch", epoch))

        def forward_train(self, image, image_large, target, epoch):
            events.append(("step", epoch))
            return torch.zeros(len(target), 2) + weight, {"loss_ce": weight.sum()}

    batch = {"image": torch.zeros(2, 3, 4, 4), "image_large": torch.zeros(2, 3, 8, 8), "target": torch.tensor([0, 1])}
    optimizer, scaler = torch.optim.SGD([weight], lr=0.1), torch.amp.GradScaler("cpu", enabled=False)
    for epoch in (1, 2):
        trainer.train_epoch(Recording(), iter([batch, batch]), 2, lambda b: b, optimizer, scaler, get_cfg(),
                            torch.device("cpu"), epoch, "run 0")
    assert events == [("set_epoch", 1), ("step", 1), ("step", 1), ("set_epoch", 2), ("step", 2), ("step", 2)]


def test_a_compiled_step_gets_a_static_graph_for_each_batch_size():
    # An epoch's short last batch once got a dynamic-shape graph, which under mixed precision then served the full
    # batches as well; static graphs keep each batch size on kernels built for it.
    cfg = get_cfg()
    cfg.TRAIN.COMPILE, cfg.TRAIN.COMPILE_BACKEND = True, "eager"
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # (reset keeps them)
    try:
        step = trainer.compile_step(cfg, lambda x: (x * 2).sin().sum())
        for size in (8, 5, 8, 3, 5):
            assert step(torch.ones(size)) == pytest.approx(size * math.sin(2))
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3  # 8, 5 and 3: never a shared dynamic one
    finally:
        torch._dynamo.reset()


# A build that fails for another reason (here the error a ViT teacher once raised under TRAIN.COMPILE) is not
# triggered for real: a failed AOTAutograd trace leaves torch's dispatcher broken in the process that tried it,
# which a training command leaves at once but this test process would not.
@pytest.mark.parametrize("backend, cause, advice", [
    ("inductor", RuntimeError("Cannot set version_counter for inference tensor\n\nWhile executing %expand_1"),
     "TRAIN.COMPILE_BACKEND aot_eager tells whether tracing the step or generating its code fails, or set "
     "TRAIN.COMPILE False"),
    ("aot_eager", RuntimeError("Cannot set version_counter for inference tensor\n\nWhile executing %expand_1"),
     "tracing the step fails, before any code is generated; set TRAIN.COMPILE False"),
    ("inductor", RuntimeError("Cannot find a working triton installation. Either the package is not installed or "
                              "it is too old."),
     "install what it names (a C++ compiler on the CPU, Triton on a GPU), or set TRAIN.COMPILE False"),
], ids=["inductor", "aot_eager", "no-triton"])
def test_a_failed_compile_names_its_cause_and_where_to_look(backend, cause, advice):
    cfg = get_cfg()
    cfg.TRAIN.COMPILE_BACKEND = backend
    message = trainer.compile_failure(cfg, cause)
    assert message == (f"TRAIN.COMPILE True: torch.compile ({backend}) could not build the training step "
                       f"(RuntimeError: {str(cause).splitlines()[0]}); {advice}")


def test_a_gpu_out_of_memory_while_compiling_is_the_out_of_memory_line_not_compiler_advice(monkeypatch):
    # Inductor's autotuning runs the step's kernels while building: a batch too large for the card fails there.
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    def build_fails(*args):
        failed = torch._dynamo.exc.BackendCompilerFailed  # torch 2.7 added a third argument, first_useful_frame
        raise failed(build_fails, oom, *[None] * (len(inspect.signature(failed).parameters) - 2))

    monkeypatch.setattr(torch, "compile", lambda step, **options: build_fails)
    cfg = get_cfg()
    cfg.TRAIN.COMPILE = True
    with pytest.raises(torch.cuda.OutOfMemoryError) as err:
        trainer.compile_step(cfg, lambda *args: None)()
    assert err.value is oom  # cli_main turns it into one line saying what to lower


def test_loader_workers_are_forked_whatever_pythons_default_start_method(tiny_cub, write_config, monkeypatch):
    # Python 3.14 starts processes through a forkserver on Linux: a worker would get the image cache pickled to it.
    import multiprocessing

    from lib.datasets import cache

    decoding = []

    class RecordingLoader(cache.DataLoader):  # the loader whose workers decode the images into the cache
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            decoding.append(self.multiprocessing_context.get_start_method())

    monkeypatch.setattr(cache, "DataLoader", RecordingLoader)
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub)
    cfg = load_config(argparse.Namespace(config_file=config, opts=["BASIC.NUM_WORKERS", 2]))
    default = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    try:
        train_set = build_dataset(cfg, is_train=True)
        assert decoding == ["fork"]
        for is_train in (True, False):
            loader = build_loader(cfg, train_set, is_train, torch.device("cpu"))
            assert loader.multiprocessing_context.get_start_method() == "fork"
    finally:
        multiprocessing.set_start_method(default, force=True)


def test_summary_reports_mean_and_sample_std_of_best_and_last():
    rows = [{"run": 0, "seed": 0, "best_acc": 50.0, "best_epoch": 3, "last_acc": 40.0},
            {"run": 1, "seed": 1, "best_acc": 60.0, "best_epoch": 5, "last_acc": 44.0}]
    results = summarize_runs(rows)  # best and last spread differently, so neither std can stand for the other
    assert results["best_acc_mean"] == 55.0 and results["last_acc_mean"] == 42.0
    assert abs(results["best_acc_std"] - 7.0710678) < 1e-6 and abs(results["last_acc_std"] - 2.8284271) < 1e-6
    table = format_table(results)
    assert "55.00 ± 7.07" in table and "42.00 ± 2.83" in table
    assert summarize_runs(rows[:1])["best_acc_std"] == 0.0  # one run: no spread, not a division by zero


def test_deterministic_mode_asks_for_deterministic_algorithms_without_autotuning_nor_filling_new_tensors():
    from lib.config import get_cfg
    from lib.engine.setup import configure_backends

    cfg = get_cfg()
    assert cfg.CUDNN.DETERMINISTIC  # the release's default
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory,
              torch.backends.cudnn.benchmark)
    try:
        cfg.CUDNN.BENCHMARK = True  # autotuning picks algorithms by timing: another choice on resume, other numbers
        configure_backends(cfg)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.utils.deterministic.fill_uninitialized_memory
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = before[1]
        torch.backends.cudnn.benchmark = before[2]


# Another process training an experiment: it holds the flock of the folder's lock file until it ends.
_HOLD = ("import fcntl, os, sys, time; path = os.path.join(sys.argv[1], '.training.lock'); "
         "fd = os.open(path, os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
         "time.sleep(120)")


def test_the_same_experiment_started_while_another_process_trains_it_is_refused_until_that_one_ends(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "BASIC": {"NUM_RUNS": 1}, "SOLVER": {"NUM_EPOCHS": 1},
                           "DATA": {"RESIZE_SIZE": 36, "CROP_SIZE": 32}}, tiny_cub)
    exp = tmp_path / "ckpt" / "cub" / "1runs_resnet18_32_seed0_0.01"
    exp.mkdir(parents=True)  # the other process has started it and written its config
    (exp / "config.yaml").write_text(load_config(argparse.Namespace(config_file=config, opts=[])).dump())
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(exp)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for opts in ([], ["BASIC.FRESH_START", "True"]):  # nor is its folder moved aside under it
            assert run_in_process(STUDENT, config, *opts, monkeypatch=monkeypatch) == 2
            line = one_error_line(capsys.readouterr().err)
            assert f"{exp} is being trained by another process (pid {holder.pid}) now" in line, line
            assert "re-run this command to resume" in line
            assert sorted(os.listdir(exp)) == [".training.lock", "config.yaml"]
            assert os.listdir(exp.parent) == [exp.name]
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops a killed holder's lock: no stale lock, the same command now trains.
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert (exp / "results.json").is_file()


def test_an_experiment_lock_moves_with_the_folder_and_forked_loader_workers_do_not_keep_it(tmp_path):
    folder = str(tmp_path / "exp")
    os.mkdir(folder)
    lock = ExperimentLock()
    lock.take(folder)
    lock.take(folder)  # taking the folder it holds is a no-op
    with pytest.raises(UserError, match="is being trained by another process"):
        ExperimentLock().take(folder)
    # A loader worker forked while the lock is held must not keep it alive after its parent lets go (or dies).
    ready, started = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process: the child only sleeps
        child = os.fork()
    if child == 0:
        os.write(started, b"1")  # after the fork hooks have run in the child
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"1"
        lock.release()
        other = ExperimentLock()
        other.take(folder)
        other.release()
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(started)
    # BASIC.FRESH_START: the old folder is moved aside and a new one made; the lock follows to the new folder.
    lock.take(folder)
    os.rename(folder, folder + ".old1")
    os.mkdir(folder)
    lock.take(folder)
    ExperimentLock().take(folder + ".old1")
    with pytest.raises(UserError, match="is being trained by another process"):
        ExperimentLock().take(folder)
    lock.release()


def test_each_optimiser_step_uses_its_own_batchs_gradient_alone():
    # loss = w * 1, so d loss / d w = 1 at every step; plain SGD, lr 0.1: w = 1 -> 0.9 -> 0.8 (by hand). Gradients
    # left over from the previous step would give 0.7; gradients cleared after backward would leave w at 1.
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = {"image": torch.ones(1, 1), "image_large": None, "target": torch.zeros(1, dtype=torch.long)}

    def step(image, image_large, target, epoch):
        out = model(image)
        return out, {"loss_ce": out.sum()}

    for expected in (0.9, 0.8):
        trainer.optimizer_step(step, batch, 1, optimizer, scaler, get_cfg(), torch.device("cpu"))
        assert model.weight.item() == pytest.approx(expected)


def test_the_test_pass_records_no_autograd_graph():
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)

        def forward(self, image):
            seen.append(torch.is_grad_enabled())
            return self.linear(image.mean((2, 3)))

    batch = {"image": torch.zeros(2, 3, 4, 4), "target": torch.tensor([0, 1])}
    trainer.test_epoch(Vanilla(Recording()), [batch], lambda b: b, get_cfg(), torch.device("cpu"))
    assert seen == [False]


def test_an_infinite_loss_stops_the_run_as_a_nan_does():
    monitor = StepMonitor(torch.device("cpu"), "run 0")
    with pytest.raises(NonFiniteLoss, match=r"not finite in run 0, epoch 1, step 3 \(loss_ce=inf"):
        monitor.push({"loss_ce": torch.tensor(float("inf"))}, 8, 1, 3)


def test_an_epoch_trains_at_the_learning_rate_before_its_decay_step(tiny_cub, write_config, monkeypatch):
    # LR_STEPS [1]: epoch 1 trains at START_LR 0.01, epoch 2 at 0.01 * 0.1 (by hand).
    used = {}
    original = trainer.optimizer_step

    def recording(step_fn, batch, epoch, optimizer, *args):
        used.setdefault(epoch, []).append(optimizer.param_groups[0]["lr"])
        return original(step_fn, batch, epoch, optimizer, *args)

    monkeypatch.setattr(trainer, "optimizer_step", recording)
    config = write_config({**ONE_RUN, "SOLVER": {"NUM_EPOCHS": 2, "LR_STEPS": [1]}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    assert sorted(used) == [1, 2]
    assert all(lr == pytest.approx(0.01) for lr in used[1]), used
    assert all(lr == pytest.approx(0.001) for lr in used[2]), used


def test_tensorboard_curves_hold_each_epochs_own_figures(tiny_cub, write_config, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scores = iter([30.0, 50.0])
    monkeypatch.setattr(trainer, "test_epoch",
                        lambda *args: {"test_top1": next(scores), "test_top5": 70.0, "test_loss": 1.5})
    config = write_config({**ONE_RUN, "SOLVER": {"NUM_EPOCHS": 2, "LR_STEPS": [1]}}, tiny_cub)
    assert run_in_process(STUDENT, config, monkeypatch=monkeypatch) == 0
    log = tmp_path / ONE_RUN_EXP / "log" / "run0"
    stats = [json.loads(line) for line in (log / "stats.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(log))
    events.Reload()

    def curve(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert curve("test/top1") == [(1, 30.0), (2, 50.0)]
    assert curve("test/top5") == [(1, 70.0), (2, 70.0)] and curve("test/loss") == [(1, 1.5), (2, 1.5)]
    assert curve("lr") == [(1, pytest.approx(0.01)), (2, pytest.approx(0.001))]
    assert curve("train/top1") == [(s["epoch"], pytest.approx(s["train_top1"])) for s in stats]
    assert curve("train/loss") == [(s["epoch"], pytest.approx(s["loss"])) for s in stats]


@pytest.mark.parametrize("key", ["DATA.DATADIR", "MODEL.MODELDICT_T", "MODEL.MODELDICT_A", "MODEL.MODELDICT_S",
                                 "MODEL.PRETRAIN_FILE", "MODEL.PRETRAIN_FILE_S", "TAS.PRETRAIN_FILE_A"])
def test_a_path_key_spelt_another_way_is_the_same_experiment_and_another_file_is_not(key, tmp_path):
    section, leaf = key.split(".")
    cfg = get_cfg()
    cfg.DATA.DATADIR = "data/cub"
    cfg[section][leaf] = "ckpt/cub/x/model_best.pth"
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(cfg.dump())
    other = cfg.clone()
    other[section][leaf] = os.path.join(REPO_ROOT, "ckpt", "cub", "x", "model_best.pth")
    resume.check_saved_config(other, str(exp))
    other[section][leaf] = "ckpt/cub/y/model_best.pth"
    with pytest.raises(UserError, match=key):
        resume.check_saved_config(other, str(exp))


def test_an_experiment_folder_deleted_while_training_stops_the_run_in_one_line(tiny_cub, write_config, tmp_path,
                                                                               monkeypatch, capsys):
    output_root = tmp_path / "out"
    test_epoch = trainer.test_epoch

    def test_then_clean_up_by_hand(*args, **kwargs):  # `rm -rf ckpt/...` from another shell during epoch 1
        stats = test_epoch(*args, **kwargs)
        shutil.rmtree(output_root / "cub")
        return stats

    monkeypatch.setattr(trainer, "test_epoch", test_then_clean_up_by_hand)
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub, output_root=str(output_root))
    assert run_in_process("tools_0_base/train_teacher_1run.py", config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "was deleted or moved while run 0 trained (epoch 1)" in line, line
    assert not (output_root / "cub").exists(), "nothing was written after the folder went"


def test_an_experiment_folder_deleted_after_a_runs_last_epoch_stops_before_its_result_is_written(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    output_root = tmp_path / "out"
    save_checkpoint = trainer.save_checkpoint

    def save_then_clean_up_by_hand(state, path):  # deleted between the last epoch's last.pth and the run's result
        save_checkpoint(state, path)
        if path.endswith("last.pth") and state["epoch"] == 2:
            shutil.rmtree(output_root / "cub")

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_clean_up_by_hand)
    config = write_config({"MODEL": {"ARCH": "resnet18"}}, tiny_cub, output_root=str(output_root))
    assert run_in_process("tools_0_base/train_teacher_1run.py", config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "was deleted or moved while run 0 finished" in line, line
    assert not (output_root / "cub").exists(), "no result.json in a folder made again"


def test_the_trainer_refuses_a_step_that_returns_other_than_logits_and_named_terms_at_its_first_batch():
    # A method being added returned the logits alone: autograd's or a sparse-layout error, not what is wrong.
    from lib.config import get_cfg

    model = torch.nn.Linear(3, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = {"image": torch.randn(2, 3), "image_large": torch.randn(2, 3), "target": torch.tensor([0, 1])}
    with pytest.raises(TypeError, match="forward_train must return .*; got Tensor"):
        trainer.optimizer_step(lambda image, large, target, epoch: model(image), batch, 1, optimizer, scaler,
                               get_cfg(), torch.device("cpu"))
    assert all(p.grad is None for p in model.parameters())  # no step taken
