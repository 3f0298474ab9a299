"""Two-stage pixel distillation (TAS): the feature loss, the stage-2 distiller, the stage configs and the scripts."""

import argparse
import glob
import json
import os
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from lib.config import REPO_ROOT, diff_cfg, get_cfg, load_config, resolve_path
from lib.distillers import TAS, build_distiller
from lib.distillers.tas import assistant_checkpoint, assistant_config, tas_config
from lib.engine import tas as engine_tas
from lib.engine.setup import experiment_dir
from lib.losses import feature_distillation_loss, isrd_loss, kd_loss
from lib.models.model_builder import build_model
from lib.utils.errors import UserError

from .conftest import one_error_line, run_in_process, save_network

TWO_STAGES = "tools_2_tas/train_tas_2stages.py"
STAGE2 = "tools_2_tas/train_tas_5runs.py"
TAS_CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "tas", "*", "*.yaml"))) + [
    os.path.join(REPO_ROOT, "configs", "demo", "cub_demo_tas.yaml")]


def _cfg(assistant_path, arch_a="resnet18", arch_s="resnet18", crop=64, ratio=2.0):
    cfg = get_cfg()
    cfg.DATA.DATASET, cfg.DATA.DATADIR, cfg.DATA.NUM_CLASSES = "cub", "unused", 4
    cfg.DATA.CROP_SIZE, cfg.DATA.RESIZE_SIZE, cfg.DATA.LESSEN_RATIO = crop, crop + 8, ratio
    cfg.MODEL.ARCH_T, cfg.MODEL.ARCH_A, cfg.MODEL.ARCH_S = "resnet50", arch_a, arch_s
    cfg.MODEL.MODELDICT_A = assistant_path
    cfg.FSR.ETA = 10.0
    return cfg


def _stage2_step(cfg):
    """(distiller, image, large image, loss terms) of one stage-2 step on a seeded batch of 2."""
    distiller = build_distiller(cfg, "tas")
    distiller.train()
    torch.manual_seed(0)
    image, image_large = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    _, losses = distiller.forward_train(image, image_large, torch.tensor([0, 1]), 1)
    return distiller, image, image_large, losses


# --- the loss -------------------------------------------------------------------------------------------------------
def test_feature_distillation_loss_golden_value():
    f_s = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).requires_grad_()
    # Bilinear 2 -> 4, align_corners=False: rows [1, 1.25, 1.75, 2], [1.5, 1.75, 2.25, 2.5], [2.5, 2.75, 3.25, 3.5],
    # [3, 3.25, 3.75, 4]; squares sum to 112.5 over 16 positions.
    loss = feature_distillation_loss(f_s, torch.zeros(1, 1, 4, 4))
    assert loss.item() == pytest.approx(7.03125, abs=1e-6)
    loss.backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    # The release's unused loss, align_corners=True: rows [1, 4/3, 5/3, 2], [5/3, 2, 7/3, 8/3], [7/3, 8/3, 3, 10/3],
    # [3, 10/3, 11/3, 4]; squares sum to 1000/9 over 16 positions.
    assert feature_distillation_loss(f_s, torch.zeros(1, 1, 4, 4), "bilinear_align_corners").item() == \
        pytest.approx(1000 / 9 / 16, abs=1e-6)
    same = torch.randn(2, 3, 5, 5)
    assert feature_distillation_loss(same, same).item() == 0.0
    with pytest.raises(ValueError, match="same batch and channels"):
        feature_distillation_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 4, 4))


# --- the stage-2 distiller ------------------------------------------------------------------------------------------
def test_tas_trains_student_and_decoder_and_the_assistant_stays_bit_identical(tmp_path):
    distiller = build_distiller(_cfg(save_network(tmp_path / "a.pth", "resnet18")), "tas")
    assert isinstance(distiller, TAS) and distiller.assistant is distiller.teacher
    learnable = {id(p) for p in distiller.get_learnable_parameters()}
    assert {id(p) for p in distiller.decoder.parameters()} <= learnable
    assert not {id(p) for p in distiller.assistant.parameters()} & learnable
    for name, p in distiller.named_parameters():
        assert (id(p) in learnable) == p.requires_grad, name
    before = {k: v.clone() for k, v in distiller.assistant.state_dict().items()}
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.1, momentum=0.9)
    distiller.train()
    assert not distiller.assistant.training
    logits, losses = distiller.forward_train(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 64, 64),
                                             torch.tensor([0, 1, 2, 3]), 1)
    assert logits.shape == (4, 4) and set(losses) == {"loss_ce", "loss_kd", "loss_isrd", "loss_fkd"}
    assert losses["loss_fkd"].item() > 0
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    after = distiller.assistant.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "assistant weights or BN statistics changed"


def test_zero_feature_weights_leave_logit_kd_and_isrd(tmp_path):
    cfg = _cfg(save_network(tmp_path / "a.pth", "resnet18"))
    cfg.TAS.FEAT_WEIGHTS = [0.0, 0.0, 0.0, 0.0]
    _, losses = build_distiller(cfg, "tas").forward_train(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64),
                                                          torch.tensor([0, 1]), 1)
    assert losses["loss_fkd"].item() == 0.0 and losses["loss_isrd"].item() > 0


@pytest.mark.parametrize("interp", ["bilinear", "bilinear_align_corners", "nearest"])
def test_each_feature_pair_is_weighted_by_its_tas_feat_weight_and_resized_as_tas_feat_interp(interp, tmp_path):
    # TAS.FEAT_INTERP not handed to the loss left every ablation of it training with bilinear, without a word.
    cfg = _cfg(save_network(tmp_path / "a.pth", "resnet18"))
    cfg.TAS.FEAT_WEIGHTS, cfg.TAS.FEAT_INTERP = [1.0, 0.0, 0.0, 2.0], interp
    distiller, image, image_large, losses = _stage2_step(cfg)
    with torch.no_grad():
        _, feats_s = distiller.student(image, return_feat=True, preReLU=cfg.MODEL.PRERELU)
        _, feats_a = distiller.assistant(image_large, return_feat=True, preReLU=cfg.MODEL.PRERELU)

    def weighted_pairs(mode):
        return (feature_distillation_loss(feats_s[1], feats_a[1], mode)
                + 2.0 * feature_distillation_loss(feats_s[4], feats_a[4], mode))

    torch.testing.assert_close(losses["loss_fkd"].detach(), weighted_pairs(interp))
    if interp != "bilinear":  # the modes give different losses on these features: the check tells them apart
        assert not torch.allclose(weighted_pairs(interp), weighted_pairs("bilinear"))


@pytest.mark.parametrize("pre_relu", [False, True])
def test_stage2_decodes_the_pre_relu_feature_as_one_stage_isrd_whatever_the_feature_pairs_take(pre_relu, tmp_path):
    cfg = _cfg(save_network(tmp_path / "a.pth", "resnet18"))
    cfg.FSR.POSITION, cfg.MODEL.PRERELU = 2, pre_relu  # a stage output, where the ReLU matters
    distiller, image, image_large, losses = _stage2_step(cfg)
    with torch.no_grad():
        _, feats_s = distiller.student(image, return_feat=True, preReLU=True)
        expected = cfg.FSR.ETA * isrd_loss(distiller.decoder(feats_s[2]), image_large)
    assert feats_s[2].min() < 0
    torch.testing.assert_close(losses["loss_isrd"].detach(), expected)


def test_stage2_logit_terms_distil_the_student_towards_the_assistants_logits(tmp_path):
    cfg = _cfg(save_network(tmp_path / "a.pth", "resnet18"))
    cfg.KD.TEMP, cfg.KD.ALPHA = 3.0, 0.7  # unlike their defaults, so a dropped or swapped weight shows
    distiller = build_distiller(cfg, "tas")
    distiller.train()
    torch.manual_seed(0)
    image, image_large, target = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    _, losses = distiller.forward_train(image, image_large, target, 1)
    with torch.no_grad():
        logits_s = distiller.student(image)
        logits_a = distiller.assistant(image_large)
    torch.testing.assert_close(losses["loss_kd"].detach(), cfg.KD.ALPHA * kd_loss(logits_s, logits_a, cfg.KD.TEMP))
    torch.testing.assert_close(losses["loss_ce"].detach(), (1 - cfg.KD.ALPHA) * F.cross_entropy(logits_s, target))


def test_a_vit_student_distils_from_a_vit_assistant_of_its_size_family(tmp_path):
    cfg = _cfg(save_network(tmp_path / "a.pth", "vit_tiny_patch16_64"), "vit_tiny_patch16_64", "vit_tiny_patch16_32")
    distiller = build_distiller(cfg, "tas")
    assert distiller.layers == [3, 6, 9, 12]  # TAS.VIT_BLOCKS: block b is feature b
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.01)
    image, image_large = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    _, losses = distiller.forward_train(image, image_large, torch.tensor([0, 1]), 1)
    with torch.no_grad():  # the tokens as they are: a ViT has no ReLU to apply to its features
        _, feats_s = distiller.student(image, return_feat=True)
        _, feats_a = distiller.assistant(image_large, return_feat=True)
    expected = sum(feature_distillation_loss(feats_s[b], feats_a[b]) for b in (3, 6, 9, 12))
    torch.testing.assert_close(losses["loss_fkd"].detach(), expected)
    sum(losses.values()).backward()
    optimizer.step()
    cfg.TAS.VIT_BLOCKS = [12, 13, 1, 2]
    with pytest.raises(UserError, match=r"TAS.VIT_BLOCKS .*\[13\].*blocks 1..12"):
        build_distiller(cfg, "tas")


@pytest.mark.parametrize("change, message", [
    ({"arch_a": "resnet34"}, "MODEL.ARCH_A is resnet34 and MODEL.ARCH_S is resnet18; set MODEL.ARCH_A resnet18"),
    ({"arch_a": "vit_small_patch16_64", "arch_s": "vit_tiny_patch16_32"}, "set MODEL.ARCH_A vit_tiny_patch16_64"),
    ({"weights": [1.0, 1.0]}, "TAS.FEAT_WEIGHTS has 2 weights but resnet18 has 4 stages"),
])
def test_stage2_refuses_what_cannot_be_paired(tmp_path, change, message):
    cfg = _cfg(str(tmp_path / "never_read.pth"), change.get("arch_a", "resnet18"), change.get("arch_s", "resnet18"))
    cfg.TAS.FEAT_WEIGHTS = change.get("weights", cfg.TAS.FEAT_WEIGHTS)
    with pytest.raises(UserError, match=re.escape(message)):
        build_distiller(cfg, "tas")


# --- the stage configs ----------------------------------------------------------------------------------------------
def test_stage1_is_a_one_stage_run_at_the_large_size_that_ignores_stage2_keys():
    cfg = _cfg("", arch_a="", arch_s="vit_tiny_patch16_32")
    stage = assistant_config(cfg)
    assert (stage.MODEL.ARCH_S, stage.DATA.LESSEN_RATIO, stage.MODEL.KDTYPE) == ("vit_tiny_patch16_64", 1.0, "kd")
    other = cfg.clone()
    other.TAS.FEAT_WEIGHTS, other.FSR.ETA, other.DATA.LESSEN_RATIO = [0.0, 2.0, 0.0, 2.0], 0.0, 4.0
    other.MODEL.ARCH_S = "vit_tiny_patch16_16"
    assert diff_cfg(stage, assistant_config(other)) == []
    assert assistant_checkpoint(cfg) == os.path.join(
        "ckpt", "cub", "1runs_kd_resnet50_64_vit_tiny_patch16_64_64_seed0_0.1", "ckpt", "model_best.pth")
    assert tas_config(cfg).MODEL.MODELDICT_A == assistant_checkpoint(cfg)


def test_stage2_trains_basic_num_runs_seeded_runs_and_stage1_one(monkeypatch):
    # Every TAS script test trains one run: a stage 2 of one run would have passed them all, and the published
    # "5runs" command would have trained one run into a 1runs_ folder.
    calls = []
    monkeypatch.setattr(engine_tas, "run_experiment",
                        lambda stage, method, num_runs, multi_run: calls.append((method, num_runs, multi_run)) or {})
    cfg = _cfg("elsewhere/assistant.pth", arch_a="resnet18")  # an assistant of its own: no stage-1 check
    cfg.BASIC.NUM_RUNS = 3
    engine_tas.train_tas(cfg)
    engine_tas.train_assistant(cfg)
    assert calls == [("tas", 3, True), ("kd", 1, False)]


@pytest.mark.parametrize("path", TAS_CONFIGS, ids=[os.path.relpath(p, REPO_ROOT) for p in TAS_CONFIGS])
def test_every_tas_config_names_the_folder_that_stage1_writes(path):
    cfg = load_config(argparse.Namespace(config_file=path, opts=[]))
    stage2 = tas_config(cfg)
    assert stage2.MODEL.ARCH_A and stage2.MODEL.MODELDICT_A == assistant_checkpoint(cfg)
    with open(path) as f:
        named = re.search(r"Stage 1 writes (\S+);", f.read())
    assert named and named.group(1) == assistant_checkpoint(cfg)


# --- through the scripts --------------------------------------------------------------------------------------------
def _tas_config(write_config, tiny_cub, teacher, **model):
    return write_config({"MODEL": {"ARCH_T": "resnet18", "MODELDICT_T": teacher, "ARCH_A": "resnet18",
                                   "ARCH_S": "resnet18", **model},
                         "DATA": {"LESSEN_RATIO": 2.0}, "FSR": {"ETA": 10.0},
                         "BASIC": {"NUM_RUNS": 1}, "SOLVER": {"NUM_EPOCHS": 1}}, tiny_cub)


def test_two_stage_command_trains_both_stages_then_skips_stage1(tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = _tas_config(write_config, tiny_cub, save_network(tmp_path / "teacher.pth", "resnet18"))
    assert run_in_process(TWO_STAGES, config, monkeypatch=monkeypatch) == 0
    first = capsys.readouterr().out
    assistant = tmp_path / "ckpt" / "cub" / "1runs_kd_resnet18_64_resnet18_64_seed0_0.01" / "ckpt" / "model_best.pth"
    stage2 = tmp_path / "ckpt" / "cub" / "1runs_tas_resnet18_64_resnet18_32_seed0_0.01"
    assert "stage 1:" in first and assistant.is_file()
    assert len(json.loads((stage2 / "results.json").read_text())["runs"]) == 1
    stats = json.loads((stage2 / "log" / "run0" / "stats.jsonl").read_text().splitlines()[-1])
    assert {"loss_ce", "loss_kd", "loss_isrd", "loss_fkd"} <= set(stats)
    best = torch.load(stage2 / "ckpt" / "run0" / "model_best.pth", weights_only=False)
    build_model("resnet18", 4, False).load_state_dict(best["state_dict"])
    assert "conv.weight" in best["decoder"]

    mtime = assistant.stat().st_mtime_ns
    assert run_in_process(TWO_STAGES, config, monkeypatch=monkeypatch) == 0
    assert "stage 1 skipped" in capsys.readouterr().out
    assert assistant.stat().st_mtime_ns == mtime

    # A stage 1 killed after writing its checkpoint but before finishing is resumed, not skipped.
    os.remove(assistant.parent.parent / "results.json")
    os.remove(assistant.parent / "result.json")
    # Stage 2 alone does not distil from that unfinished assistant (its model_best.pth is an earlier epoch's).
    assert run_in_process(STAGE2, config, monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "model_best.pth comes from a stage 1 that has not finished" in err
    assert "tools_2_tas/train_assistant_1run.py" in err and err.count("\n") == 1
    assert run_in_process(TWO_STAGES, config, monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert "stage 1 skipped" not in out and "resuming after epoch 1" in out
    assert (assistant.parent.parent / "results.json").is_file()


def test_two_stage_command_does_not_skip_a_stage1_of_another_config_or_teacher(tiny_cub, write_config, tmp_path,
                                                                               monkeypatch, capsys):
    # Stage 1's folder name holds no teacher file and no epoch count: it was skipped, and stage 2 distilled from an
    # assistant that this command's stage 1 would not have made.
    config = _tas_config(write_config, tiny_cub, save_network(tmp_path / "teacher.pth", "resnet18"))
    assert run_in_process(TWO_STAGES, config, monkeypatch=monkeypatch) == 0
    stage1 = tmp_path / "ckpt" / "cub" / "1runs_kd_resnet18_64_resnet18_64_seed0_0.01"
    mtime = (stage1 / "ckpt" / "model_best.pth").stat().st_mtime_ns
    other = save_network(tmp_path / "teacher2.pth", "resnet18", seed=1)
    capsys.readouterr()
    for opts, changed in ((["MODEL.MODELDICT_T", other], "MODEL.MODELDICT_T"),
                          (["SOLVER.NUM_EPOCHS", "2", "BASIC.NUM_RUNS", "2"], "SOLVER.NUM_EPOCHS (1 -> 2)")):
        assert run_in_process(TWO_STAGES, config, *opts, monkeypatch=monkeypatch) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: {stage1} holds an experiment with another config: {changed}"), line
    # The teacher file itself replaced, at the same path.
    shutil.copy(other, tmp_path / "teacher.pth")
    assert run_in_process(TWO_STAGES, config, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: MODEL.MODELDICT_T {tmp_path / 'teacher.pth'} has changed since {stage1} started "
                           "from it"), line
    assert (stage1 / "ckpt" / "model_best.pth").stat().st_mtime_ns == mtime
    # BASIC.FRESH_START True starts both stages over.
    assert run_in_process(TWO_STAGES, config, "BASIC.FRESH_START", "True", monkeypatch=monkeypatch) == 0
    assert "stage 1:" in capsys.readouterr().out and (tmp_path / "ckpt" / "cub" / f"{stage1.name}.old1").is_dir()


def test_stage2_without_a_teacher_names_its_folder_after_the_assistant(tiny_cub, write_config, tmp_path, monkeypatch):
    # docs/tas.md: MODEL.ARCH_T '' with an explicit MODELDICT_A. It was refused, as if stage 1 had to be found.
    config = _tas_config(write_config, tiny_cub, "", ARCH_T="", ARCH_A="resnet34", ARCH_S="resnet34",
                         MODELDICT_A=save_network(tmp_path / "a.pth", "resnet34"))
    assert run_in_process(STAGE2, config, monkeypatch=monkeypatch) == 0
    results = tmp_path / "ckpt" / "cub" / "1runs_tas_resnet34_64_resnet34_32_seed0_0.01" / "results.json"
    assert len(json.loads(results.read_text())["runs"]) == 1


def test_stage2_with_another_family_exits_2_with_one_line(tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = _tas_config(write_config, tiny_cub, "unused.pth", ARCH_A="resnet34",
                         MODELDICT_A=save_network(tmp_path / "a.pth", "resnet34"))
    assert run_in_process(STAGE2, config, monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "MODEL.ARCH_A is resnet34" in err
    assert not (tmp_path / "ckpt").exists()


def test_the_two_stage_command_refuses_a_stage2_decoder_position_before_stage1_trains(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = _tas_config(write_config, tiny_cub, save_network(tmp_path / "teacher.pth", "resnet18"))
    assert run_in_process(TWO_STAGES, config, "FSR.POSITION", "7", monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == "error: FSR.POSITION 7 is out of range: resnet18 has 5 features (0 = its input module)"
    assert not (tmp_path / "ckpt").exists()  # stage 1 did not start


def test_stage2_without_its_assistant_says_how_to_train_it(tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = _tas_config(write_config, tiny_cub, "unused.pth")
    assert run_in_process(STAGE2, config, monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "1runs_kd_resnet18_64_resnet18_64_seed0_0.01" in err and "train_assistant_1run.py" in err


def test_stage1_config_and_folder_ignore_every_stage2_only_key():
    cfg = _cfg("")
    other = cfg.clone()
    other.MODEL.MODELDICT_A, other.MODEL.MODELDICT_S = "a.pth", "s.pth"
    other.FSR.ETA, other.FSR.POSITION = 5.0, 2
    other.TAS.FEAT_WEIGHTS, other.TAS.VIT_BLOCKS, other.TAS.FEAT_INTERP = [0.0, 1.0, 0.0, 1.0], [1, 2, 3, 4], "bicubic"
    other.DATA.LESSEN_TYPE = 3
    assert diff_cfg(assistant_config(cfg), assistant_config(other)) == []
    assert assistant_checkpoint(other) == assistant_checkpoint(cfg)


def test_stage1_starts_the_assistant_from_the_assistants_pretraining_keys_not_the_students():
    cfg = _cfg("")
    cfg.MODEL.PRETRAIN_A, cfg.MODEL.PRETRAIN_S = True, False
    cfg.TAS.PRETRAIN_FILE_A, cfg.MODEL.PRETRAIN_FILE_S = "assistant.pth", "student.pth"
    stage = assistant_config(cfg)
    assert (stage.MODEL.PRETRAIN_S, stage.MODEL.PRETRAIN_FILE_S) == (True, "assistant.pth")
    cfg.MODEL.PRETRAIN_A, cfg.MODEL.PRETRAIN_S = False, True
    assert assistant_config(cfg).MODEL.PRETRAIN_S is False


def test_stage1_is_named_and_written_after_tas_stage1_kdtype_whatever_model_kdtype():
    cfg = _cfg("")
    cfg.MODEL.KDTYPE, cfg.TAS.STAGE1_KDTYPE = "kd", "at"
    stage = assistant_config(cfg)
    assert stage.MODEL.KDTYPE == "at"
    # By hand: <OUTPUT_ROOT>/<dataset>/1runs_<STAGE1_KDTYPE>_<teacher>_<crop>_<assistant>_<crop>_seed0_<lr>/ckpt/...
    assert assistant_checkpoint(cfg) == os.path.join(
        "ckpt", "cub", "1runs_at_resnet50_64_resnet18_64_seed0_0.1", "ckpt", "model_best.pth")
    # ... where stage 1 (run_experiment(stage, stage.MODEL.KDTYPE, 1, multi_run=False)) writes its best checkpoint.
    assert resolve_path(assistant_checkpoint(cfg)) == os.path.join(experiment_dir(stage, "at", 1), "ckpt",
                                                                   "model_best.pth")


def test_with_prerelu_both_sides_of_every_feature_pair_are_taken_before_their_relu(tmp_path):
    cfg = _cfg(save_network(tmp_path / "a.pth", "resnet18"))
    cfg.MODEL.PRERELU = True
    distiller, image, image_large, losses = _stage2_step(cfg)
    with torch.no_grad():
        _, feats_s = distiller.student(image, return_feat=True, preReLU=True)
        _, feats_a = distiller.assistant(image_large, return_feat=True, preReLU=True)
    assert all((feats_s[i] < 0).any() for i in (1, 2, 3))  # a ReLU on one side would change these pairs
    expected = sum(feature_distillation_loss(feats_s[i], feats_a[i]) for i in (1, 2, 3, 4))  # FEAT_WEIGHTS all 1
    torch.testing.assert_close(losses["loss_fkd"].detach(), expected)


def test_the_two_stage_command_takes_the_stage1_checkpoint_however_its_path_is_spelt(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(engine_tas, "train_assistant", lambda cfg: calls.append("stage 1"))
    monkeypatch.setattr(engine_tas, "train_tas", lambda cfg: calls.append("stage 2") or {})
    cfg = _cfg("")
    cfg.BASIC.OUTPUT_ROOT = str(tmp_path / "out")
    ckpt = assistant_checkpoint(cfg)
    cfg.MODEL.MODELDICT_A = ckpt.replace(str(tmp_path), str(tmp_path / "." / "out" / ".."), 1)  # same file
    assert cfg.MODEL.MODELDICT_A != ckpt
    engine_tas.train_two_stages(cfg)
    assert calls == ["stage 1", "stage 2"]


@pytest.mark.parametrize("change, message", [
    ({"MODEL.MODELDICT_A": "elsewhere/model_best.pth"}, "leave MODEL.MODELDICT_A ''"),
    # The student's files: stage 1 (the assistant, 140 epochs with the real configs) trained before they were read.
    ({"MODEL.MODELDICT_S": "/nope/student.pth"}, "student checkpoint MODEL.MODELDICT_S not found: /nope/student.pth"),
    ({"MODEL.PRETRAIN_S": True, "MODEL.PRETRAIN_FILE_S": "/nope/imagenet.pth"},
     "weight file not found: /nope/imagenet.pth"),
    ({"MODEL.ARCH_A": "vit_tiny_patch16_64", "MODEL.ARCH_S": "vit_tiny_patch16_32", "TAS.VIT_BLOCKS": [1, 2, 3, 13]},
     "TAS.VIT_BLOCKS"),
])
def test_the_two_stage_command_refuses_what_stage2_cannot_do_before_stage1_trains(tmp_path, monkeypatch, change,
                                                                                  message):
    calls = []
    monkeypatch.setattr(engine_tas, "train_assistant", lambda cfg: calls.append("stage 1"))
    monkeypatch.setattr(engine_tas, "train_tas", lambda cfg: calls.append("stage 2") or {})
    cfg = _cfg("")
    cfg.BASIC.OUTPUT_ROOT = str(tmp_path / "out")
    for key, value in change.items():
        section, leaf = key.split(".")
        cfg[section][leaf] = value
    with pytest.raises(UserError, match=re.escape(message)):
        engine_tas.train_two_stages(cfg)
    assert calls == []

