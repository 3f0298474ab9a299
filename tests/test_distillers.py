"""Distillers: the frozen teacher, parameter registration, loss terms, and every method through the scripts."""

import argparse
import json
import math
import os
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from lib.config import KDTYPES, REPO_ROOT, get_cfg, given_on_the_command_line, load_config, pass_on_the_command_line
from lib.distillers import ISRD, FeatureKD, build_distiller, build_teacher, check_archs
from lib.distillers.base import check_step_output, unfinished_run
from lib.losses import dkd_loss, ickd_loss, kd_loss, sp_loss
from lib.losses.at import at_loss
from lib.losses.isrd import isrd_loss
from lib.models.model_builder import build_model
from lib.utils.errors import UserError

from .conftest import one_error_line, run_in_process, run_script, save_network

KD_SCRIPT = "tools_1_ts/train_kd_5runs.py"
ISRD_SCRIPT = "tools_1_ts/train_isrd_5runs.py"


def _cfg(teacher_path, arch_t="resnet18", arch_s="resnet18", kdtype="kd", crop=64, ratio=2.0):
    cfg = get_cfg()
    cfg.DATA.DATASET, cfg.DATA.DATADIR, cfg.DATA.NUM_CLASSES = "cub", "unused", 4
    cfg.DATA.CROP_SIZE, cfg.DATA.RESIZE_SIZE, cfg.DATA.LESSEN_RATIO = crop, crop + 8, ratio
    cfg.MODEL.ARCH_T, cfg.MODEL.ARCH_S, cfg.MODEL.MODELDICT_T, cfg.MODEL.KDTYPE = arch_t, arch_s, teacher_path, kdtype
    cfg.FSR.ETA = 10.0
    return cfg


def test_a_model_key_only_the_other_kind_of_script_reads_is_warned_of_not_silently_ignored(tmp_path, capsys):
    # MODEL.PRETRAIN False to a distillation script, for a from-scratch ablation, left its PRETRAIN_S student as
    # it was; MODEL.ARCH_S to a baseline trained MODEL.ARCH.
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    cfg = _cfg(teacher_path)
    cfg.MODEL.ARCH, cfg.MODEL.PRETRAIN = "resnet34", True
    student = build_distiller(cfg, "kd", teacher=build_model("resnet18", 4, False)).student
    assert student.fc.in_features == 512 and len(student.layer1) == 2  # resnet18 (ARCH_S), not resnet34
    distillation = ("distillation trains the student MODEL.ARCH_S from MODEL.PRETRAIN_S (PRETRAIN_FILE_S, "
                    "MODELDICT_S); the teacher and student baselines read MODEL.ARCH and MODEL.PRETRAIN(_FILE)")
    assert capsys.readouterr().out.splitlines() == [f"warning: MODEL.ARCH resnet34 is ignored: {distillation}",
                                                    f"warning: MODEL.PRETRAIN True is ignored: {distillation}"]
    baseline = get_cfg()
    baseline.DATA.NUM_CLASSES, baseline.MODEL.ARCH = 4, "resnet18"
    baseline.MODEL.ARCH_S, baseline.MODEL.ARCH_T = "resnet34", "resnet50"
    build_distiller(baseline, "single")
    reads = ("a teacher or student baseline trains MODEL.ARCH from MODEL.PRETRAIN(_FILE); the distillation scripts "
             "read the _T, _A and _S keys")
    assert capsys.readouterr().out.splitlines() == [f"warning: MODEL.ARCH_T resnet50 is ignored: {reads}",
                                                    f"warning: MODEL.ARCH_S resnet34 is ignored: {reads}"]
    build_distiller(_cfg(teacher_path), "kd")  # a config of its kind: nothing to say
    assert capsys.readouterr().out == ""
    # MODEL.PRETRAIN False on the command line of a distillation script (its default value: an intent all the same).
    args = argparse.Namespace(config_file=os.path.join(REPO_ROOT, "configs/demo/cub_demo_isrd.yaml"),
                              opts=["MODEL.PRETRAIN", "False", "MODEL.MODELDICT_T", teacher_path,
                                    "DATA.NUM_CLASSES", "4"])
    loaded = load_config(args)
    capsys.readouterr()
    build_distiller(loaded, "kd")
    assert capsys.readouterr().out == f"warning: MODEL.PRETRAIN False is ignored: {distillation}\n"
    build_distiller(loaded.clone(), "kd")  # another config (a copy): its own command line is not known
    assert capsys.readouterr().out == ""
    # ... unless it is made from the command's config for a stage of it: TAS's stages, the benchmark's pipelines.
    from lib.distillers.tas import assistant_config, tas_config

    for stage in (tas_config(loaded), assistant_config(loaded)):
        assert given_on_the_command_line(stage) == given_on_the_command_line(loaded) >= {"MODEL.PRETRAIN"}
    build_distiller(pass_on_the_command_line(loaded, loaded.clone()), "kd")
    assert capsys.readouterr().out == f"warning: MODEL.PRETRAIN False is ignored: {distillation}\n"


@pytest.mark.parametrize("method", [*KDTYPES, "isrd"])  # a method added to KDTYPES is checked too
def test_every_learnable_parameter_reaches_the_optimiser_and_the_teacher_stays_bit_identical(tmp_path, method):
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    distiller = build_distiller(_cfg(teacher_path, kdtype=method), method)
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    for name, p in distiller.named_parameters():
        if p.requires_grad:
            assert id(p) in learnable, f"{name} requires grad but is not optimised"
        if name.startswith("teacher."):
            assert not p.requires_grad and id(p) not in learnable
    before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.1, momentum=0.9)
    distiller.train()
    assert not distiller.teacher.training
    for epoch in (1, 2):
        logits, losses = distiller.forward_train(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 64, 64),
                                                 torch.tensor([0, 1, 2, 3]), epoch)
        assert logits.shape == (4, 4) and all(k.startswith("loss_") for k in losses)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = distiller.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "teacher weights or BN statistics changed"


def test_a_method_registered_without_its_builder_branch_is_refused_not_trained_as_another(tmp_path, monkeypatch):
    # A method added to KDTYPES (docs/extending.md) whose branch was forgotten fell through to ICKD: a folder named
    # after the new method held an ICKD run.
    import lib.distillers as distillers

    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    monkeypatch.setattr(distillers, "METHODS", (*distillers.METHODS, "mse"))
    with pytest.raises(NotImplementedError, match="MODEL.KDTYPE 'mse' is in lib.config.KDTYPES, but build_distiller"):
        build_distiller(_cfg(teacher_path, kdtype="mse"), "mse")


@pytest.mark.parametrize("output, problem", [
    (torch.zeros(4, 4), "got Tensor"),  # the logits alone
    ((torch.zeros(4, 4),), "got a tuple of 1 (Tensor)"),
    ((torch.zeros(4, 4), {}), "got a tuple of 2 (Tensor, dict): no loss term, nothing to train"),
    (((torch.zeros(4, 4), [torch.zeros(4, 8)]), {"loss_ce": torch.tensor(1.0)}), "got a tuple of 2 (tuple, dict)"),
    ((torch.zeros(4, 4), {"mse": torch.tensor(1.0)}), "the term 'mse' is not named loss_<term>"),
    ((torch.zeros(4, 4), {"loss_mse": torch.zeros(4)}), "the term 'loss_mse' is shape (4,), not a scalar tensor"),
    ((torch.zeros(4, 4), {"loss_mse": 0.5}), "the term 'loss_mse' is float, not a scalar tensor"),
])
def test_a_training_step_that_returns_other_than_logits_and_named_scalar_terms_says_what_is_wrong(output, problem):
    # A method being added: the trainer met these as "grad can be implicitly created only for scalar outputs",
    # "'float' object has no attribute 'detach'" or a sparse-layout error.
    with pytest.raises(TypeError, match=re.escape(problem)):
        check_step_output(output)
    good = (torch.zeros(4, 4), {"loss_ce": torch.tensor(1.0), "loss_mse": torch.tensor(0.5)})
    assert check_step_output(good) is good


def _expected_terms(distiller, cfg, method, image, image_large, target, epoch):
    """The loss terms of `method` recomputed from the pure loss functions and the config's weights."""
    if method == "single":  # the teacher and student baselines: cross-entropy alone, batch-mean
        with torch.no_grad():
            return {"loss_ce": F.cross_entropy(distiller.student(image), target)}
    with torch.no_grad():
        pre_relu = True if method == "isrd" else cfg.MODEL.PRERELU
        logits_s, feats_s = distiller.student(image, return_feat=True, preReLU=pre_relu)
        logits_t, feats_t = distiller.teacher(image_large, return_feat=True, preReLU=pre_relu)
    ce = F.cross_entropy(logits_s, target)
    if method in ("kd", "isrd"):
        terms = {"loss_ce": (1 - cfg.KD.ALPHA) * ce, "loss_kd": cfg.KD.ALPHA * kd_loss(logits_s, logits_t, cfg.KD.TEMP)}
        if method == "isrd":
            terms["loss_isrd"] = cfg.FSR.ETA * isrd_loss(distiller.decoder(feats_s[cfg.FSR.POSITION]), image_large)
        return terms
    if method == "dkd":
        warmup = min(epoch / cfg.DKD.WARMUP, 1.0)
        return {"loss_ce": ce, "loss_dkd": warmup * dkd_loss(logits_s, logits_t, target, cfg.DKD.ALPHA, cfg.DKD.BETA,
                                                            cfg.DKD.TEMP)}
    if method == "at":
        return {"loss_ce": ce, "loss_at": cfg.AT.BETA * sum(at_loss(s, t) for s, t in zip(feats_s[1:], feats_t[1:]))}
    if method == "sp":
        return {"loss_ce": ce, "loss_sp": cfg.SP.BETA * sp_loss(feats_s[-1], feats_t[-1])}
    if method == "ickd":
        return {"loss_ce": ce,
                "loss_ickd": cfg.ICKD.BETA * ickd_loss(distiller.criterion.embed(feats_s[-1]), feats_t[-1])}
    raise AssertionError(f"a new method, {method}: add its terms, from its pure loss and its config weights, here")


def _assert_terms_are_weighted_pure_losses(tmp_path, method, epoch, pre_relu=False):
    """One training step of `method`, every term checked against _expected_terms; the distiller and its images."""
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    cfg = _cfg(teacher_path, kdtype=method)
    cfg.MODEL.PRERELU, cfg.MODEL.ARCH = pre_relu, "resnet18"  # MODEL.ARCH: what the baselines train
    # Weights unlike their defaults and unlike each other, so a swapped or dropped one shows.
    cfg.KD.TEMP, cfg.KD.ALPHA, cfg.FSR.ETA = 3.0, 0.7, 5.0
    cfg.AT.BETA, cfg.SP.BETA, cfg.ICKD.BETA = 11.0, 13.0, 1.5
    cfg.DKD.ALPHA, cfg.DKD.BETA, cfg.DKD.TEMP, cfg.DKD.WARMUP = 0.5, 6.0, 2.0, 20
    distiller = build_distiller(cfg, method)
    distiller.train()
    torch.manual_seed(0)
    image, image_large, target = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    _, losses = distiller.forward_train(image, image_large, target, epoch)
    expected = _expected_terms(distiller, cfg, method, image, image_large, target, epoch)
    assert set(losses) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name].detach(), value, msg=name)
    return distiller, image, image_large


@pytest.mark.parametrize("method", ["single", *KDTYPES, "isrd"])
@pytest.mark.parametrize("epoch", [1, 30])
def test_every_loss_term_is_its_config_weight_times_the_pure_loss_on_the_right_features(tmp_path, method, epoch):
    _assert_terms_are_weighted_pure_losses(tmp_path, method, epoch)


def test_dkd_release_warmup_reaches_the_distillers_loss(tmp_path):
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    cfg = _cfg(teacher_path, kdtype="dkd")
    cfg.DKD.WARMUP, cfg.DKD.RELEASE_WARMUP = 20, True
    assert build_distiller(cfg, "dkd").criterion.warmup_factor(1) == 2 / 20  # one epoch ahead, as the release


def test_a_compiled_dkd_step_follows_the_warm_up_without_being_built_again_each_epoch(tmp_path):
    # The warm-up factor once came from the Python int `epoch`: dynamo specialised the graph on it and built it
    # again every epoch (a cold inductor build each, compiling nothing after its limit of 8).
    from lib.engine.trainer import compile_step

    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    cfg = _cfg(teacher_path, kdtype="dkd", crop=32)
    cfg.DKD.WARMUP, cfg.TRAIN.COMPILE, cfg.TRAIN.COMPILE_BACKEND = 3, True, "eager"  # eager: dynamo's graphs alone
    distiller = build_distiller(cfg, "dkd").train()
    torch.manual_seed(0)
    image, image_large, target = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # (reset keeps them)
    try:
        step = compile_step(cfg, distiller.forward_train)
        for epoch in (1, 2, 3, 4, 5):
            distiller.set_epoch(epoch)  # as train_epoch does
            with torch.no_grad():
                compiled = step(image, image_large, target, epoch)[1]["loss_dkd"]
                eager = distiller.forward_train(image, image_large, target, epoch)[1]["loss_dkd"]
                pure = dkd_loss(distiller.student(image), distiller.teacher(image_large), target, cfg.DKD.ALPHA,
                                cfg.DKD.BETA, cfg.DKD.TEMP)
            torch.testing.assert_close(compiled, eager)
            torch.testing.assert_close(eager, min(epoch / 3, 1.0) * pure)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("method", ["at", "sp", "ickd"])
def test_feature_kd_with_prerelu_distils_the_features_before_relu_of_both_student_and_teacher(tmp_path, method):
    distiller, image, image_large = _assert_terms_are_weighted_pure_losses(tmp_path, method, 1, pre_relu=True)
    # The comparison only tells pre- from post-ReLU features apart where the distilled features have negatives.
    with torch.no_grad():
        _, feats_s = distiller.student(image, return_feat=True, preReLU=True)
        _, feats_t = distiller.teacher(image_large, return_feat=True, preReLU=True)
    for feats in (feats_s, feats_t):
        assert all(f.min() < 0 for f in feats[distiller.layers])


# Beside test_kd_gradient_reaches_student_only (tests/test_losses.py): the other teacher-side losses.
@pytest.mark.parametrize("loss", [
    at_loss,
    sp_loss,
    ickd_loss,
    lambda s, t: dkd_loss(s.flatten(1)[:, :4], t.flatten(1)[:, :4], torch.tensor([0, 3]), 1.0, 8.0, 4.0),
], ids=["at", "sp", "ickd", "dkd"])
def test_feature_and_dkd_losses_leave_no_gradient_on_a_teacher_tensor_that_requires_grad(loss):
    generator = torch.Generator().manual_seed(0)
    # The teacher feature is larger, as the teacher sees the large image.
    s = torch.randn(2, 4, 4, 4, generator=generator).requires_grad_()
    t = torch.randn(2, 4, 8, 8, generator=generator).requires_grad_()
    loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_ickd_embedding_is_trained_unless_the_release_switch_is_set(tmp_path):
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    cfg = _cfg(teacher_path, kdtype="ickd")
    trained = build_distiller(cfg, "ickd")
    assert isinstance(trained, FeatureKD)
    embed = {id(p) for p in trained.criterion.parameters()}
    assert embed and embed <= {id(p) for p in trained.get_learnable_parameters()}
    cfg.ICKD.TRAIN_EMBED = False
    release = build_distiller(cfg, "ickd")
    assert not {id(p) for p in release.criterion.parameters()} & {id(p) for p in release.get_learnable_parameters()}


def test_isrd_decodes_the_vit_patch_embedding_into_the_large_image(tmp_path):
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    cfg = _cfg(teacher_path, arch_s="vit_tiny_patch16_32", crop=64, ratio=2.0)
    distiller = build_distiller(cfg, "isrd")
    assert isinstance(distiller, ISRD)
    # ViT-Tiny@32: a 192x2x2 patch embedding; s = ceil(64 / 2) = 32 -> 3x64x64.
    assert distiller.decoder.conv.in_channels == 192 and distiller.decoder.scale == 32
    _, losses = distiller.forward_train(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64),
                                        torch.tensor([0, 1]), 1)
    assert set(losses) == {"loss_ce", "loss_kd", "loss_isrd"}
    # The term is the decoded patch embedding (tokens before the position embedding, no class token) against the
    # large image: the patch embedding is the student's feature at FSR.POSITION 0.
    torch.manual_seed(0)
    image, image_large = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    _, losses = distiller.forward_train(image, image_large, torch.tensor([0, 1]), 1)
    with torch.no_grad():
        _, feats_s = distiller.student(image, return_feat=True, preReLU=True)
        assert feats_s[0].shape == (2, 192, 2, 2)
        expected = cfg.FSR.ETA * isrd_loss(distiller.decoder(feats_s[0]), image_large)
    torch.testing.assert_close(losses["loss_isrd"].detach(), expected)


def test_a_distillers_teacher_is_frozen_and_in_eval_mode_as_soon_as_it_is_built(tmp_path):
    # Not only once train() is called: a direct caller of forward_train would otherwise update its BN statistics.
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    teacher = build_model("resnet18", 4, False).train()
    distiller = build_distiller(_cfg(teacher_path), "kd", teacher=teacher)
    assert not distiller.teacher.training and not any(p.requires_grad for p in distiller.teacher.parameters())
    before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    distiller.forward_train(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64), torch.tensor([0, 1]), 1)
    assert all(torch.equal(before[k], v) for k, v in distiller.teacher.state_dict().items())


def test_at_pairs_a_vit_students_first_four_blocks_with_the_cnn_teachers_four_stages_as_the_release(tmp_path):
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    distiller = build_distiller(_cfg(teacher_path, arch_s="vit_tiny_patch16_32", kdtype="at"), "at")
    torch.manual_seed(0)
    image, image_large = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    _, losses = distiller.forward_train(image, image_large, torch.tensor([0, 1]), 1)
    # The release: sum(ATLoss(feats_s[1:], feats_t[1:])) with zip stopping at the teacher's four stages.
    with torch.no_grad():
        _, feats_s = distiller.student(image, return_feat=True)
        _, feats_t = distiller.teacher(image_large, return_feat=True)
    assert len(feats_s) == 13 and len(feats_t) == 5
    expected = sum(at_loss(f_s, f_t) for f_s, f_t in zip(feats_s[1:], feats_t[1:]))
    torch.testing.assert_close(losses["loss_at"].detach(), distiller.beta * expected)


def test_isrd_decodes_the_students_features_before_relu_as_the_release(tmp_path):
    teacher_path = str(tmp_path / "t.pth")
    save_network(teacher_path, "resnet18")
    cfg = _cfg(teacher_path, kdtype="isrd")
    cfg.FSR.POSITION = 1  # layer1: its ReLU'd output would be >= 0 everywhere
    distiller = build_distiller(cfg, "isrd")
    torch.manual_seed(0)
    image, image_large = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    _, losses = distiller.forward_train(image, image_large, torch.tensor([0, 1]), 1)
    _, pre_relu = distiller.student(image, return_feat=True, preReLU=True)
    assert pre_relu[1].min() < 0
    expected = cfg.FSR.ETA * isrd_loss(distiller.decoder(pre_relu[1]), image_large)
    torch.testing.assert_close(losses["loss_isrd"], expected)


@pytest.mark.parametrize("change, message", [
    ({"arch": "resnet34"}, "does not fit resnet18.*another architecture"),
    ({"classes": 7}, "7 classes, but DATA.NUM_CLASSES is 4"),
    ({"classes": 7, "arch": "vit_tiny_patch16_64", "arch_t": "vit_tiny_patch16_64"},
     "7 classes, but DATA.NUM_CLASSES is 4"),  # a ViT's classifier is its head
    ({"missing": True}, "not found"),
])
def test_teacher_checkpoint_mismatches_name_the_file_and_the_difference(tmp_path, change, message):
    teacher_path = str(tmp_path / "t.pth")
    if not change.get("missing"):
        torch.save({"state_dict": build_model(change.get("arch", "resnet18"), change.get("classes", 4),
                                              False).state_dict()}, teacher_path)
    with pytest.raises(UserError, match=message) as err:
        build_distiller(_cfg(teacher_path, arch_t=change.get("arch_t", "resnet18")), "kd")
    assert "t.pth" in str(err.value)


def test_release_teacher_checkpoints_with_module_prefix_and_fc_cls_load(tmp_path):
    teacher_path = str(tmp_path / "release.pth")
    model = build_model("resnet18", 4, False)
    release = {"module." + k.replace("fc.", "fc_cls."): v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": release, "best_acc": 1.0}, teacher_path)
    distiller = build_distiller(_cfg(teacher_path), "kd")
    assert torch.equal(distiller.teacher.fc.weight, model.fc.weight)


# --- through the scripts, with the teacher from a real tiny teacher run (conftest's tiny_teacher) ------------------
def _distill_config(write_config, tiny_cub, teacher, arch_s="resnet18"):
    return write_config({"MODEL": {"ARCH_T": "resnet18", "MODELDICT_T": teacher.checkpoint, "ARCH_S": arch_s},
                         "DATA": {"LESSEN_RATIO": 2.0}, "FSR": {"ETA": 10.0},
                         "BASIC": {"NUM_RUNS": 1}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)


def test_a_teacher_whose_run_has_not_finished_is_refused(tiny_cub, tiny_teacher, write_config, tmp_path,
                                                          monkeypatch, capsys):
    # Its model_best.pth is the best of the epochs trained so far (a teacher run stopped, or training now).
    copy = tmp_path / "teacher_exp"
    shutil.copytree(tiny_teacher.exp, copy)
    os.remove(copy / "ckpt" / "result.json")
    checkpoint = str(copy / "ckpt" / "model_best.pth")
    config = _distill_config(write_config, tiny_cub, tiny_teacher)
    assert run_in_process(KD_SCRIPT, config, "MODEL.MODELDICT_T", checkpoint, monkeypatch=monkeypatch) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: teacher checkpoint MODEL.MODELDICT_T {checkpoint} comes from a run that has not finished "
        f"({copy / 'ckpt'} holds no result.json): it is the best of the epochs trained so far; finish that run "
        "(re-run its command), then this one")
    assert not (tmp_path / "ckpt").exists()
    # The same file outside a run's folder (copied away, downloaded) is taken as given.
    shutil.copy(checkpoint, tmp_path / "teacher.pth")
    assert unfinished_run(str(tmp_path / "teacher.pth")) is None
    assert unfinished_run(str(tiny_teacher.checkpoint)) is None


@pytest.mark.parametrize("kdtype", KDTYPES)
def test_every_kdtype_trains_through_the_published_script(tiny_cub, tiny_teacher, write_config, tmp_path,
                                                          monkeypatch, kdtype):
    config = _distill_config(write_config, tiny_cub, tiny_teacher)
    assert run_in_process(KD_SCRIPT, config, "MODEL.KDTYPE", f"'{kdtype}'", "MODEL.ARCH_S", "'resnet18'",
                          "DATA.LESSEN_RATIO", "2.0", "BASIC.GPU_ID", "[0]", monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / f"1runs_{kdtype}_resnet18_64_resnet18_32_seed0_0.01"
    results = json.loads((exp / "results.json").read_text())
    assert len(results["runs"]) == 1
    stats = json.loads((exp / "log" / "run0" / "stats.jsonl").read_text().splitlines()[-1])
    assert f"loss_{kdtype}" in stats and "loss_ce" in stats  # the method's own term, logged beside CE
    best = torch.load(exp / "ckpt" / "run0" / "model_best.pth", weights_only=False)
    build_model("resnet18", 4, False).load_state_dict(best["state_dict"])


@pytest.mark.parametrize("arch_s", ["resnet18", "vit_tiny_patch16_32"])
def test_isrd_trains_cnn_and_vit_students_and_saves_the_decoder_beside_the_plain_student(
        tiny_cub, tiny_teacher, write_config, tmp_path, monkeypatch, arch_s):
    config = _distill_config(write_config, tiny_cub, tiny_teacher, arch_s)
    opts = ("MODEL.ARCH_S", arch_s, "FSR.ETA", "10.0", "BASIC.GPU_ID", "[0]")
    if arch_s == "resnet18":  # the published command as users run it, in a process of its own
        run_script(ISRD_SCRIPT, config, *opts)
    else:
        assert run_in_process(ISRD_SCRIPT, config, *opts, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / f"1runs_isrd_resnet18_64_{arch_s}_32_seed0_0.01"
    best = torch.load(exp / "ckpt" / "run0" / "model_best.pth", weights_only=False)
    build_model(arch_s, 4, False).load_state_dict(best["state_dict"])
    assert "conv.weight" in best["decoder"]
    stats = json.loads((exp / "log" / "run0" / "stats.jsonl").read_text().splitlines()[-1])
    assert {"loss_ce", "loss_kd", "loss_isrd"} <= set(stats)


def test_a_vit_teacher_distils_into_a_cnn_student_with_dkd(tiny_cub, write_config, tmp_path, monkeypatch):
    teacher_path = str(tmp_path / "vit_teacher.pth")
    save_network(teacher_path, "vit_tiny_patch16_64")
    config = write_config({"MODEL": {"ARCH_T": "vit_tiny_patch16_64", "MODELDICT_T": teacher_path,
                                     "ARCH_S": "resnet18", "KDTYPE": "dkd"},
                           "DATA": {"LESSEN_RATIO": 2.0}, "BASIC": {"NUM_RUNS": 1},
                           "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    assert run_in_process(KD_SCRIPT, config, monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_dkd_vit_tiny_patch16_64_64_resnet18_32_seed0_0.01"
    assert json.loads((exp / "results.json").read_text())["runs"][0]["best_epoch"] == 1
    stats = json.loads((exp / "log" / "run0" / "stats.jsonl").read_text().splitlines()[-1])
    assert {"loss_ce", "loss_dkd"} <= set(stats) and stats["loss_dkd"] > 0


def test_isrd_on_the_device_pipeline_sees_what_the_tensor_pipeline_sees(tiny_cub, tiny_teacher, write_config,
                                                                         tmp_path, monkeypatch):
    import argparse

    from lib.config import load_config
    from lib.datasets import BatchPreparer, build_dataset
    from lib.engine.setup import seed_everything
    from lib.engine.trainer import build_loader

    config = _distill_config(write_config, tiny_cub, tiny_teacher)
    losses = {}
    for pipeline in ("tensor", "device"):
        cfg = load_config(argparse.Namespace(config_file=config, opts=["DATA.PIPELINE", pipeline]))
        loader = build_loader(cfg, build_dataset(cfg, True), True, torch.device("cpu"))
        loader.batch_sampler.set_epochs([7])
        batch = BatchPreparer(cfg, "cpu")(next(iter(loader)))
        seed_everything(0)
        distiller = build_distiller(cfg, "isrd").train()
        _, terms = distiller.forward_train(batch["image"], batch["image_large"], batch["target"], 1)
        losses[pipeline] = {k: v.item() for k, v in terms.items()}
    # Same crops, flips and order, pixels within one uint8 level: the loss terms agree closely.
    for key in ("loss_ce", "loss_kd", "loss_isrd"):
        assert losses["device"][key] == pytest.approx(losses["tensor"][key], rel=2e-2), key
    # And the published script trains on it.
    assert run_in_process(ISRD_SCRIPT, config, "DATA.PIPELINE", "'device'", monkeypatch=monkeypatch) == 0
    exp = tmp_path / "ckpt" / "cub" / "1runs_isrd_resnet18_64_resnet18_32_seed0_0.01"
    stats = json.loads((exp / "log" / "run0" / "stats.jsonl").read_text().splitlines()[-1])
    assert {"loss_ce", "loss_kd", "loss_isrd"} <= set(stats) and math.isfinite(stats["loss"])


def test_a_compiled_training_step_trains_like_the_eager_one(tiny_cub, write_config, tmp_path, monkeypatch):
    # A ViT teacher, a ResNet student: the teacher's class token, expanded to the batch in inference mode, once made
    # every compiled step with a ViT teacher (or TAS assistant) fail. The aot_eager backend traces the whole step as
    # inductor does (dynamo, then AOTAutograd) and runs torch's own kernels: inductor's code generation takes
    # minutes of C++ compilation on a CPU without a warm cache; the GPU script (tools/gpu_benchmark.sh) runs it.
    teacher = tmp_path / "vit_teacher.pth"
    save_network(teacher, "vit_tiny_patch16_64")
    config = write_config({"MODEL": {"ARCH_T": "vit_tiny_patch16_64", "MODELDICT_T": str(teacher),
                                     "ARCH_S": "resnet18"}, "DATA": {"LESSEN_RATIO": 2.0},
                           "FSR": {"ETA": 10.0}, "BASIC": {"NUM_RUNS": 1}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)
    stats = {}
    for compiled in (False, True):
        root = tmp_path / f"compile_{compiled}"
        opts = (config, "TRAIN.COMPILE", str(compiled), "TRAIN.COMPILE_BACKEND", "aot_eager",
                "BASIC.OUTPUT_ROOT", f"'{root}'")
        if compiled:  # in a process of its own: compiling leaves caches and settings behind in the process
            run_script(ISRD_SCRIPT, *opts)
        else:
            assert run_in_process(ISRD_SCRIPT, *opts, monkeypatch=monkeypatch) == 0
        exp = root / "cub" / "1runs_isrd_vit_tiny_patch16_64_64_resnet18_32_seed0_0.01"
        stats[compiled] = json.loads((exp / "log" / "run0" / "stats.jsonl").read_text().splitlines()[-1])
    for key in ("loss_ce", "loss_kd", "loss_isrd"):
        assert stats[True][key] == pytest.approx(stats[False][key], rel=1e-3), key


def test_the_teacher_takes_every_weight_from_its_checkpoint_and_fetches_no_imagenet_weights(tmp_path):
    from lib.distillers import build_teacher

    path = tmp_path / "teacher.pth"
    saved = build_model("resnet18", 4, False).state_dict()
    torch.save({"state_dict": saved, "arch": "resnet18"}, path)
    cfg = get_cfg()
    cfg.DATA.NUM_CLASSES = 4
    cfg.MODEL.ARCH_T, cfg.MODEL.MODELDICT_T = "resnet18", str(path)
    # Neither the release's PRETRAIN_T nor a weight file that is not there is read (offline, a fetch would fail).
    cfg.MODEL.PRETRAIN_T, cfg.MODEL.PRETRAIN_FILE_T = True, str(tmp_path / "missing.pth")
    teacher = build_teacher(cfg)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("role", ["teacher", "assistant"])
def test_a_teacher_or_assistant_trained_at_another_input_size_loads_with_a_warning(role, tmp_path, capsys):
    from lib.distillers import build_teacher
    from lib.distillers.tas import build_assistant

    path = tmp_path / f"{role}.pth"
    cfg = get_cfg()
    cfg.DATA.NUM_CLASSES, cfg.DATA.CROP_SIZE, cfg.DATA.LESSEN_RATIO = 4, 64, 2.0  # it sees the large image
    cfg.MODEL.ARCH_T, cfg.MODEL.MODELDICT_T = "resnet18", str(path)
    cfg.MODEL.ARCH_A, cfg.MODEL.MODELDICT_A = "resnet18", str(path)
    for input_size in (112, 64):
        torch.save({"state_dict": build_model("resnet18", 4, False).state_dict(), "arch": "resnet18",
                    "input_size": input_size}, path)
        (build_teacher if role == "teacher" else build_assistant)(cfg)
        out = capsys.readouterr().out
        if input_size == 112:
            assert f"warning: the {role} {path} was trained at 112 px and sees 64 px images here (DATA.CROP_SIZE)" \
                in out
        else:
            assert "was trained at" not in out


@pytest.mark.parametrize("method, change, message", [
    ("kd", {"MODEL.ARCH_T": ""}, "MODEL.ARCH_T is empty"),
    ("kd", {"MODEL.ARCH_T": "vit_tiny_patch16_224"}, "vit_tiny_patch16_224 takes 224x224 inputs but gets 64x64"),
    ("tas", {"MODEL.ARCH_A": "vit_tiny_patch16_224", "MODEL.ARCH_S": "vit_tiny_patch16_32"},
     "vit_tiny_patch16_224 takes 224x224 inputs but gets 64x64"),
    ("tas", {"MODEL.ARCH_A": "resnet18", "DATA.LESSEN_RATIO": 8.0}, "resnet18 cannot take 8x8 inputs"),
    ("tas", {"MODEL.ARCH_A": "vit_tiny_patch16_64", "MODEL.ARCH_S": "vit_tiny_patch16_32",
             "TAS.FEAT_WEIGHTS": [1.0, 1.0, 1.0]}, "TAS.FEAT_WEIGHTS has 3 weights but TAS.VIT_BLOCKS names 4"),
])
def test_architecture_checks_refuse_every_network_that_cannot_take_its_input(method, change, message):
    cfg = _cfg("unused.pth")
    for key, value in change.items():
        section, leaf = key.split(".")
        cfg[section][leaf] = value
    with pytest.raises(UserError, match=re.escape(message)):
        check_archs(cfg, method)


def test_a_distillation_without_a_teacher_checkpoint_says_how_to_train_one():
    with pytest.raises(UserError, match="MODEL.MODELDICT_T is empty; train a teacher with "
                                        "tools_0_base/train_teacher_1run.py"):
        build_teacher(_cfg(""))

