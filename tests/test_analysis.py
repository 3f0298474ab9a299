"""tools/eval.py, tools/cost.py and tools/summarize.py on tiny generated data and hand-written experiment trees."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
import statistics
from pathlib import Path

import matplotlib.axes
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from lib.analysis import cost
from lib.analysis.cost import LiveTensorBytes, count_flops, expand_archs, flops_of, format_markdown
from lib.analysis.evaluate import classification_report, plot_confusion
from lib.analysis.summary import METHOD_LABELS, build_rows, distill_name_pattern, find_experiments
from lib.config import get_cfg
from lib.models.model_builder import CNN_MIN_INPUT_SIZE, build_model
from lib.utils.errors import UserError
from lib.utils.log import INTERRUPTED_LINE

from .conftest import OOM_MESSAGE, one_error_line, run_cli, run_in_process

EVAL = "tools/eval.py"
COST = "tools/cost.py"
SUMMARIZE = "tools/summarize.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOO_SMALL = CNN_MIN_INPUT_SIZE - 1  # an input size no CNN of the builder takes



_run = run_cli
_one_error_line = one_error_line


# ---------------------------------------------------------------------------------------------------------------
# tools/eval.py
# ---------------------------------------------------------------------------------------------------------------
STUDENT = {"MODEL": {"ARCH_T": "resnet18", "ARCH_S": "resnet18"}, "DATA": {"LESSEN_RATIO": 2.0}}


def _checkpoint(path, arch="resnet18", classes=4, **meta) -> str:
    torch.manual_seed(0)
    torch.save({"epoch": 1, "state_dict": build_model(arch, classes, False).state_dict(), "best_acc": 0.0, **meta},
               path)
    return str(path)


def test_eval_reports_a_real_checkpoint_at_the_student_size(tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    ckpt_dir = tmp_path / "exp" / "ckpt" / "run0"
    ckpt_dir.mkdir(parents=True)
    ckpt = _checkpoint(ckpt_dir / "model_best.pth")
    config = write_config(STUDENT, tiny_cub)
    assert run_in_process(EVAL, config, "TEST.CHECKPOINT", ckpt, monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert "was trained at" not in out
    out_dir = ckpt_dir / "eval" / "model_best_32px"  # 64 px crop / LESSEN_RATIO 2
    for word in ("top-1", "top-5", "mean per-class", str(out_dir)):
        assert word in out, (word, out)

    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert (metrics["arch"], metrics["input_size"], metrics["num_images"], metrics["num_classes"]) == (
        "resnet18", 32, 16, 4)
    with open(out_dir / "confusion_matrix.csv") as f:
        rows = list(csv.reader(f))
    confusion = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert confusion.shape == (4, 4) and confusion.sum() == 16 and confusion.sum(1).tolist() == [4, 4, 4, 4]
    assert metrics["top1"] == pytest.approx(100.0 * np.trace(confusion) / 16)
    assert metrics["mean_per_class_acc"] == pytest.approx(np.mean(np.diag(confusion) / 4) * 100.0)
    assert metrics["top5"] == 100.0  # 4 classes: the top 5 hold every class
    with open(out_dir / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert [r["class_name"] for r in per_class] == [row[0] for row in rows[1:]]
    assert [int(r["correct"]) for r in per_class] == np.diag(confusion).tolist()
    assert (out_dir / "confusion_matrix.png").read_bytes()[:8] == PNG_MAGIC

    # The same predictions as the network run by hand on the test split at 32 px.
    from lib.config import load_config, parse_args
    from lib.datasets import BatchPreparer, build_dataset

    cfg = load_config(parse_args(["--config_file", config]))
    model = build_model("resnet18", 4, False).eval()
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    prep = BatchPreparer(cfg, "cpu")
    test_set = build_dataset(cfg, is_train=False)
    batch = prep(torch.utils.data.default_collate([test_set[i] for i in range(len(test_set))]))
    assert batch["image"].shape[-1] == 32
    with torch.no_grad():
        correct = (model(batch["image"]).argmax(1) == batch["target"]).float().mean().item() * 100.0
    assert metrics["top1"] == pytest.approx(correct)


def test_eval_writes_its_report_to_out_and_says_an_unwritable_folder_before_the_test_pass(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    from lib.analysis import evaluate

    ckpt_dir = tmp_path / "archive" / "ckpt" / "run0"  # an archived experiment, say, that takes no new files
    ckpt_dir.mkdir(parents=True)
    ckpt = _checkpoint(ckpt_dir / "model_best.pth")
    (ckpt_dir / "eval").write_text("")  # a file where the default report folder goes: it cannot be made
    config = write_config(STUDENT, tiny_cub)
    scored = []
    real_predict = evaluate.predict
    monkeypatch.setattr(evaluate, "predict", lambda *args: scored.append(1) or real_predict(*args))
    assert run_in_process(EVAL, config, "TEST.CHECKPOINT", ckpt, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot create the folder {ckpt_dir / 'eval' / 'model_best_32px'}") and \
        line.endswith("(--out)"), line
    assert scored == []  # said before the test pass, not after it
    out = tmp_path / "reports" / "best"
    assert run_in_process(EVAL, config, "TEST.CHECKPOINT", ckpt, "--out", str(out), monkeypatch=monkeypatch) == 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 16 and scored == [1]
    assert sorted(os.listdir(out)) == ["confusion_matrix.csv", "confusion_matrix.png", "metrics.json",
                                       "per_class.csv"]


def test_eval_warns_when_the_checkpoint_was_trained_at_another_input_size(tiny_cub, write_config, tmp_path,
                                                                          monkeypatch, capsys):
    ckpt = _checkpoint(tmp_path / "model_best.pth", input_size=64)
    assert run_in_process(EVAL, write_config(STUDENT, tiny_cub), "TEST.CHECKPOINT", ckpt, monkeypatch=monkeypatch) == 0
    assert (f"warning: the checkpoint {ckpt} was trained at 64 px and sees 32 px images here (DATA.CROP_SIZE / "
            "DATA.LESSEN_RATIO; give the experiment's config.yaml to match)") in capsys.readouterr().out


def test_eval_reads_a_runs_last_pth_as_its_last_epochs_weights(tiny_cub, write_config, tmp_path, monkeypatch):
    best = _checkpoint(tmp_path / "model_best.pth")
    weights = torch.load(best, weights_only=True)["state_dict"]
    # As the trainer writes it, numpy's RNG state included (a weights-only load allows numpy arrays).
    torch.save({"epoch": 2, "student": weights, "extra": {}, "optimizer": {}, "best_acc": 0.0,
                "rng": {"numpy": np.random.get_state()}}, tmp_path / "last.pth")
    config = write_config(STUDENT, tiny_cub)
    for name in ("model_best", "last"):
        assert run_in_process(EVAL, config, "TEST.CHECKPOINT", str(tmp_path / f"{name}.pth"),
                              monkeypatch=monkeypatch) == 0
    best_metrics, last_metrics = (json.loads((tmp_path / "eval" / f"{name}_32px" / "metrics.json").read_text())
                                  for name in ("model_best", "last"))
    assert (last_metrics["epoch"], last_metrics["run_best_acc"]) == (2, 0.0)
    assert (last_metrics["top1"], last_metrics["top5"]) == (best_metrics["top1"], best_metrics["top5"])


@pytest.mark.parametrize("case", ["empty", "missing", "other class count"])
def test_eval_checkpoint_mistakes_are_one_line(case, tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    config = write_config(STUDENT, tiny_cub)
    opts = {"empty": [], "missing": ["TEST.CHECKPOINT", str(tmp_path / "none.pth")],
            "other class count": ["TEST.CHECKPOINT", _checkpoint(tmp_path / "c9.pth", classes=9)]}[case]
    words = {"empty": ["TEST.CHECKPOINT is empty"], "missing": ["none.pth", "not found"],
             "other class count": ["9 classes", "DATA.NUM_CLASSES is 4"]}[case]
    assert run_in_process(EVAL, config, *opts, monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert all(word in line for word in words), line
    assert not (tmp_path / "eval").exists()


def test_classification_report_golden():
    # 3 classes; class 2 has no test image. Rows: true 0, 0, 1, 1, 1.
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    targets = torch.tensor([0, 0, 1, 1, 1])
    report = classification_report(scores, targets, ["a", "b", "c"])
    assert report["confusion"].tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert report["top1"] == pytest.approx(40.0)
    assert report["top5"] == 100.0  # 3 classes: the top 5 hold every class
    assert report["mean_per_class_acc"] == pytest.approx((50.0 + 100.0 / 3) / 2)  # class c has no images
    a, b, c = report["per_class"]
    assert (a["support"], a["correct"], a["accuracy"], a["most_confused_with"]) == (2, 1, 50.0, "b")
    assert b["precision"] == pytest.approx(50.0) and c["accuracy"] is None and c["support"] == 0


def test_classification_reports_top5_misses_a_label_ranked_sixth():
    # 7 classes: the first image's label ranks 1st, the second's 6th (outside the top 5), the third's 5th.
    scores = torch.tensor([[7.0, 6, 5, 4, 3, 2, 1], [7.0, 6, 5, 4, 3, 2, 1], [7.0, 6, 5, 4, 3, 2, 1]])
    report = classification_report(scores, torch.tensor([0, 5, 4]), [str(i) for i in range(7)])
    assert (report["top1"], report["top5"]) == (pytest.approx(100 / 3), pytest.approx(200 / 3))


# ---------------------------------------------------------------------------------------------------------------
# tools/cost.py
# ---------------------------------------------------------------------------------------------------------------
def test_cost_tool_writes_markdown_csv_json(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cost"
    args = ["--archs", "resnet18", "vit_tiny_patch16", "--sizes", "32", "--batch-sizes", "1", "2", "--repeats", "1",
            "--warmup", "0", "--device", "cpu", "--num-classes", "4", "--out", str(out)]
    assert _run(COST, *args, monkeypatch=monkeypatch) == 0
    data = json.loads((out / "cost.json").read_text())
    rows = {r["arch"]: r for r in data["rows"]}
    assert set(rows) == {"resnet18", "vit_tiny_patch16_32"} and data["meta"]["device"] == "cpu"
    for arch, row in rows.items():
        model = build_model(arch, 4, False)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert row["flops"] == count_flops(model, 32) and row["macs"] == row["flops"] // 2
        assert (row["input_pixels"], row["input_bytes"]) == (1024, 3072)
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b2"] > 0
        assert 0 < row["peak_mem_mb_b1"] < row["peak_mem_mb_b2"]
    with open(out / "cost.csv") as f:
        assert [r["arch"] for r in csv.DictReader(f)] == ["resnet18", "vit_tiny_patch16_32"]
    markdown = (out / "cost.md").read_text()
    assert "| resnet18 | 32 |" in markdown and "LiveTensorBytes" in markdown


def test_cost_flag_mistakes_are_one_line(tmp_path, monkeypatch, capsys):
    cases = ((["--archs", "resnet19"], "resnet19"),
             (["--archs", "resnet18", "--sizes", str(TOO_SMALL)], f"{CNN_MIN_INPUT_SIZE} px"),
             (["--archs", "resnet18", "--sizes", "32", "--batch-sizes", "0"], "--batch-sizes"))
    for args, word in cases:
        assert _run(COST, *args, "--out", str(tmp_path / "c"), monkeypatch=monkeypatch) == 2
        assert word in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "c").exists()


def test_cost_refuses_a_size_too_large_for_memory_without_trying_one_image_of_it(tmp_path, monkeypatch, capsys):
    # 22400 for 2240: the memory check itself ran a forward at that size and died in the CPU allocator.
    monkeypatch.setattr(cost, "available_memory_bytes", lambda: 2 * 2**30)
    tried = []
    real = cost.peak_activation_bytes
    monkeypatch.setattr(cost, "peak_activation_bytes", lambda model, x: tried.append(x.shape[-1]) or real(model, x))
    assert _run(COST, "--archs", "resnet18", "--sizes", "22400", "--batch-sizes", "1", "--device", "cpu",
                "--out", str(tmp_path), monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --batch-sizes 1: resnet18 @ 22400 px needs about ") and line.endswith(
        "GiB for one forward at batch 1, more than the 2.0 GiB this process can take; use smaller --sizes"), line
    assert tried == [224] and not os.listdir(tmp_path)


def test_cost_refuses_a_cpu_batch_larger_than_the_free_memory_before_measuring_any_pair(tmp_path, monkeypatch,
                                                                                         capsys):
    # A forward that needs more memory than the machine has would be killed by the kernel, with nothing to read;
    # refused at the last pair only after the first was measured, the first's minutes would be lost.
    one_image = (cost.peak_activation_bytes(build_model("resnet18", 4, False).eval(), torch.zeros(1, 3, 32, 32))
                 + 3 * 32 * 32 * 4)
    monkeypatch.setattr(cost, "available_memory_bytes", lambda: 10 * one_image)
    monkeypatch.setattr(cost, "check_weights_fit_in_memory", lambda arch, num_classes: None)  # the images' check alone
    timed = []
    monkeypatch.setattr(cost, "median_latency_ms", lambda *args: timed.append(args) or 1.0)
    args = ["--sizes", "32", "--device", "cpu", "--num-classes", "4", "--out", str(tmp_path)]
    # ResNet-50 holds more per image than ResNet-18: 9 images fit one, not the other.
    assert _run(COST, "--archs", "resnet18", "resnet50", *args, "--batch-sizes", "1", "9", monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --batch-sizes 9: resnet50 @ 32 px needs about ") and "smaller --batch-sizes" in line
    assert not timed and not os.listdir(tmp_path)
    assert _run(COST, "--archs", "resnet18", *args, "--batch-sizes", "1", "9", monkeypatch=monkeypatch) == 0
    assert _run(COST, "--archs", "resnet18", *args, "--batch-sizes", "11", monkeypatch=monkeypatch) == 2


def test_cost_refuses_a_classifier_whose_weights_alone_exceed_the_memory_naming_num_classes(tmp_path, monkeypatch,
                                                                                           capsys):
    # --num-classes 100000000 died in the CPU allocator building the model (190 GiB of fc weights), with advice
    # to lower --batch-sizes; counted on the meta device, nothing is allocated, on the CPU or for a GPU.
    monkeypatch.setattr(cost, "available_memory_bytes", lambda: 100 * 2**20)
    built = []
    monkeypatch.setattr(cost, "measure", lambda *args: built.append(args))
    for device in ("cpu", "cuda"):
        monkeypatch.setattr(cost, "resolve_device", lambda name, device=device: torch.device(device))
        # resnet18's classifier: 512 x 100,000 fp32 weights, 195 MiB
        assert _run(COST, "--archs", "resnet18", "--sizes", "32", "--num-classes", "100000", "--device", device,
                    "--out", str(tmp_path), monkeypatch=monkeypatch) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert line.startswith("error: --num-classes 100000: resnet18 has 62 M parameters (0.2 GiB), more than "
                               "the 0.1 GiB") and line.endswith("use a smaller --num-classes"), line
    assert not built and not os.listdir(tmp_path)
    cost.check_weights_fit_in_memory("resnet18", 10000)  # 5.1 M fc weights + 11.2 M: 62 MiB fit


def test_the_memory_a_cpu_measurement_may_take_is_what_the_container_leaves(tmp_path, monkeypatch):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("1000000\n")
    usage.write_text("400000\n")
    monkeypatch.setattr(cost, "_CGROUP_MEMORY", ((str(limit), str(usage)),))
    assert cost.available_memory_bytes() == 600000  # far below this machine's MemAvailable
    limit.write_text("max\n")  # no limit: the machine's free memory
    assert cost.available_memory_bytes() > 600000


def test_cost_says_which_measurement_ran_out_of_gpu_memory(tmp_path, monkeypatch, capsys):
    def out_of_memory(model, x, warmup, repeats):
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)
        return 1.0

    monkeypatch.setattr(cost, "median_latency_ms", out_of_memory)
    args = ["--archs", "resnet18", "--sizes", "32", "--batch-sizes", "1", "4096", "--device", "cpu", "--out",
            str(tmp_path)]
    assert _run(COST, *args, monkeypatch=monkeypatch) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "error: the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
        "of 79.19 GiB of which 1.06 GiB is free.): resnet18 @ 32 px does not fit at batch 4096; use smaller "
        "--batch-sizes or free the GPU of other processes")
    assert not os.listdir(tmp_path)


def test_a_gpu_out_of_memory_elsewhere_in_cost_names_its_own_flag(tmp_path, monkeypatch, capsys):
    # Outside a measurement (moving a model to the card, say) the tool's own hint, not the training scripts' keys.
    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError(OOM_MESSAGE)

    monkeypatch.setattr(cost, "count_flops", out_of_memory)
    args = ["--archs", "resnet18", "--sizes", "32", "--batch-sizes", "1", "--device", "cpu", "--out", str(tmp_path)]
    assert _run(COST, *args, monkeypatch=monkeypatch) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: the GPU ran out of memory (")
    assert line.endswith("): use smaller --batch-sizes or free the GPU of other processes"), line


def test_flops_golden_values():
    # A conv and a linear layer: 2 FLOPs per multiply-add.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    assert count_flops(model, 4) == 2 * (8 * 3 * 9 * 4 * 4) + 2 * (8 * 4 * 4 * 5)
    # ViT-Tiny/16 at 32 px: 5 tokens of 192 dims, 12 blocks (12 D^2 MACs per token in linears, 2 N^2 D in
    # attention), the patch embedding (4 patches x 192 x 768) and the head; the attention products are counted.
    n, d, classes = 5, 192, 200
    macs = 12 * (12 * d * d * n + 2 * n * n * d) + 4 * d * 768 + d * classes
    assert flops_of("vit_tiny_patch16_32", 32, classes) == 2 * macs
    # ResNet-18 at 224 px: torchvision's published operation count (its "GFLOPS" are multiply-adds).
    from torchvision.models import ResNet18_Weights

    published = ResNet18_Weights.IMAGENET1K_V1.meta["_ops"] * 1e9  # 1.814
    assert flops_of("resnet18", 224, 1000) / 2 == pytest.approx(published, rel=1e-3)
    # flops_of builds on the meta device (no weights, no arithmetic): the count of a real forward.
    for arch, size in (("shufflenet_v2_x0_5", 32), ("resnet50", 32), ("vit_small_patch16_32", 32)):
        assert flops_of(arch, size, 10) == count_flops(build_model(arch, 10, False), size), arch


def test_live_tensor_bytes_tracks_the_peak_and_frees():
    x = torch.ones(1000)  # made before: not counted
    with torch.no_grad(), LiveTensorBytes() as tracker:
        a = x + 1  # 4000 bytes
        b = a * 2  # 8000 live
        view = b.view(10, 100)  # shares b's storage: nothing new
        del a  # 4000 live
        c = view.sum()  # 4 bytes
        weight_view = x.view(10, 100)  # a view of an outside storage: not counted
    assert tracker.peak == 8000 and tracker.live == 4004
    del b, view, c, weight_view
    assert tracker.live == 0


def test_cost_arch_list_gives_each_vit_its_size_and_refuses_a_cnn_below_its_minimum():
    pairs = expand_archs(["resnet18", "vit_tiny_patch16", "vit_small_patch16_56"], [112, 56])
    assert pairs == [("resnet18", 112), ("resnet18", 56), ("vit_tiny_patch16_112", 112), ("vit_tiny_patch16_56", 56),
                     ("vit_small_patch16_56", 56)]
    with pytest.raises(UserError, match=rf"\(--sizes\): it needs at least {CNN_MIN_INPUT_SIZE} px"):
        expand_archs(["resnet18"], [TOO_SMALL])
    with pytest.raises(UserError, match=r"vit_tiny_patch16_8 cannot take 8 px inputs \(its name in --archs\)"):
        expand_archs(["vit_tiny_patch16_8"], [112])


# ---------------------------------------------------------------------------------------------------------------
# tools/summarize.py
# ---------------------------------------------------------------------------------------------------------------
def _experiment(root, dataset, name, accs, *, config=True, **keys):
    """A finished experiment folder: config.yaml (the full config) and results.json of runs with `accs`."""
    cfg = get_cfg()
    cfg.DATA.DATASET, cfg.DATA.DATADIR, cfg.DATA.NUM_CLASSES = dataset, "data/x", 4
    for key, value in keys.items():
        section, leaf = key.split("__")
        cfg[section][leaf] = value
    folder = root / dataset / name
    folder.mkdir(parents=True)
    if config:
        (folder / "config.yaml").write_text(cfg.dump())
    # Each last accuracy 1 below the mean, spread twice as wide as the best: a swapped column would show.
    mean = statistics.mean(accs)
    lasts = [mean - 1.0 + 2 * (a - mean) for a in accs]
    runs = [{"run": i, "seed": i, "best_acc": a, "best_epoch": 3, "last_acc": last}
            for i, (a, last) in enumerate(zip(accs, lasts))]
    std = statistics.stdev(accs) if len(accs) > 1 else 0.0
    results = {"runs": runs, "best_acc_mean": mean, "best_acc_std": std, "last_acc_mean": mean - 1.0,
               "last_acc_std": 2 * std}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "ckpt" / "run0").mkdir(parents=True)
    return folder


DISTILL = {"MODEL__ARCH_T": "resnet50", "MODEL__ARCH_S": "resnet18", "DATA__CROP_SIZE": 64, "DATA__RESIZE_SIZE": 72,
           "DATA__LESSEN_RATIO": 2.0}


@pytest.fixture
def experiment_tree(tmp_path):
    root = tmp_path / "ckpt"
    _experiment(root, "cub", "1runs_resnet50_64_seed0_0.01", [80.0], MODEL__ARCH="resnet50", DATA__CROP_SIZE=64)
    _experiment(root, "cub", "2runs_resnet18_32_seed0_0.01", [50.0, 52.0], MODEL__ARCH="resnet18", DATA__CROP_SIZE=32)
    _experiment(root, "cub", "1runs_resnet18_32_seed0_0.1", [10.0], MODEL__ARCH="resnet18", DATA__CROP_SIZE=32)
    _experiment(root, "cub", "2runs_kd_resnet50_64_resnet18_32_seed0_0.01", [55.0, 57.0], **DISTILL)
    _experiment(root, "cub", "2runs_isrd_resnet50_64_resnet18_32_seed0_0.01", [58.0, 60.0], **DISTILL)
    # Moved aside by BASIC.FRESH_START, and a folder without config.yaml: both skipped.
    _experiment(root, "cub", "2runs_dkd_resnet50_64_resnet18_32_seed0_0.01.old1", [1.0, 2.0], **DISTILL)
    _experiment(root, "cub", "2runs_sp_resnet50_64_resnet18_32_seed0_0.01", [3.0, 4.0], config=False, **DISTILL)
    _experiment(root, "aircraft", "2runs_at_resnet50_64_vit_tiny_patch16_32_seed0_0.01", [40.0, 41.0],
                **{**DISTILL, "MODEL__ARCH_S": "vit_tiny_patch16_32"})
    return root


def test_summarize_builds_the_paper_table_and_plots(experiment_tree, tmp_path, monkeypatch, capsys):
    out = tmp_path / "summary"
    points = []  # what each plot draws: (method label, x, y, y error)
    real_errorbar = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, x, y, yerr=None, **kw: points.append(
        (kw["label"], list(x), list(y), list(yerr))) or real_errorbar(self, x, y, yerr=yerr, **kw))
    assert _run(SUMMARIZE, "--root", str(experiment_tree), "--out", str(out), monkeypatch=monkeypatch) == 0
    captured = capsys.readouterr()
    assert "sp_resnet50" in captured.err and "no config.yaml" in captured.err  # the skipped folder is named
    assert "1runs_resnet18_32_seed0_0.1" in captured.err  # the baseline not shown (fewer runs) is named
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["teacher_arch"], r["student_arch"], r["student_size"]) for r in rows] == [
        ("aircraft", "resnet50", "vit_tiny_patch16_32", "32"), ("cub", "resnet50", "resnet18", "32"),
        ("cub", "", "resnet50", "64")]
    pair = rows[1]
    assert float(pair["teacher_best_acc"]) == 80.0 and pair["teacher_size"] == "64"
    assert float(pair["student_best_mean"]) == 51.0 and pair["student_runs"] == "2"  # the 2-run baseline
    assert float(pair["kd_best_mean"]) == 56.0 and float(pair["kd_last_mean"]) == 55.0
    assert float(pair["isrd_best_mean"]) == 59.0 and float(pair["isrd_best_std"]) == pytest.approx(2**0.5)
    assert float(pair["isrd_last_mean"]) == 58.0 and float(pair["isrd_last_std"]) == pytest.approx(2 * 2**0.5)
    assert pair["dkd_best_mean"] == "" and pair["sp_best_mean"] == ""  # .old1 and config-less folders skipped
    assert int(pair["student_flops"]) == flops_of("resnet18", 32, 4)
    assert (pair["student_input_pixels"], pair["student_input_bytes"]) == ("1024", "3072")
    assert float(rows[0]["at_best_mean"]) == 40.5 and rows[0]["student_best_mean"] == ""
    markdown = (out / "summary.md").read_text()
    assert "| cub | resnet50@64 | 80.00 | resnet18@32 | 51.00 ± 1.41 / 50.00 ± 2.83 (2) |" in markdown
    assert markdown in captured.out
    for name in ("acc_vs_flops.png", "acc_vs_pixels.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    # The plots show each method's best accuracy, mean ± std, at the student's GFLOPs, then its input pixels.
    isrd = [(x, y, err) for label, x, y, err in points if label == METHOD_LABELS["isrd"]]
    assert [(x, y) for x, y, _ in isrd] == [([flops_of("resnet18", 32, 4) / 1e9], [59.0]), ([1024], [59.0])]
    assert all(err == [pytest.approx(2**0.5)] for *_, err in isrd)


def test_a_size_sweep_of_vit_students_is_tabled_by_size_not_as_text(tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    for size in (64, 149, 89, 74):  # the release's ViT-Tiny sizes; as text 149 sorted first and 64 before 74
        _experiment(root, "cub", f"2runs_isrd_resnet50_224_vit_tiny_patch16_{size}_seed0_0.01", [50.0, 52.0],
                    **{**DISTILL, "MODEL__ARCH_S": f"vit_tiny_patch16_{size}", "DATA__CROP_SIZE": 224,
                       "DATA__LESSEN_RATIO": 224 / size})
    for size in (32, 112):
        _experiment(root, "cub", f"2runs_isrd_resnet50_224_resnet18_{size}_seed0_0.01", [50.0, 52.0],
                    **{**DISTILL, "DATA__CROP_SIZE": 224, "DATA__LESSEN_RATIO": 224 / size})
    rows = build_rows(find_experiments(str(root)))
    assert [(r.arch, r.size) for r in rows] == [
        ("resnet18", 112), ("resnet18", 32), ("vit_tiny_patch16_149", 149), ("vit_tiny_patch16_89", 89),
        ("vit_tiny_patch16_74", 74), ("vit_tiny_patch16_64", 64)]


def test_summarize_without_results_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    assert _run(SUMMARIZE, "--root", str(tmp_path / "empty"), monkeypatch=monkeypatch) == 2
    assert "no experiment" in _one_error_line(capsys.readouterr().err)
    assert _run(SUMMARIZE, "--root", str(tmp_path / "nowhere"), monkeypatch=monkeypatch) == 2
    assert "does not exist" in _one_error_line(capsys.readouterr().err)
    # A relative --root is taken from the repository root; one found only from the current folder is named.
    monkeypatch.chdir(tmp_path)
    assert _run(SUMMARIZE, "--root", "empty", monkeypatch=monkeypatch) == 2
    assert _one_error_line(capsys.readouterr().err).endswith(
        f"not the current folder, where empty exists: give it as {tmp_path / 'empty'})")


def test_experiment_config_is_read_not_the_name(tmp_path, monkeypatch, capsys):
    # A renamed single-network folder: the architecture and size come from config.yaml.
    root = tmp_path / "ckpt"
    _experiment(root, "cub", "my_baseline", [33.0], MODEL__ARCH="resnet34", DATA__CROP_SIZE=64, DATA__LESSEN_RATIO=2.0)
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    with open(root / "summary" / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["student_arch"], row["student_size"], row["student_best_mean"]) == ("resnet34", "32", "33.0")
    assert yaml.safe_load((root / "cub" / "my_baseline" / "config.yaml").read_text())["MODEL"]["ARCH"] == "resnet34"


def test_a_method_whose_name_begins_with_another_s_is_not_filed_under_it():
    # A method added as "kd_rev" (docs/extending.md): its folders were read as KD experiments.
    pattern = distill_name_pattern(["kd", "at", "kd_rev"])
    assert pattern.match("2runs_kd_rev_resnet50_224_resnet18_56_seed0_0.01").group(1) == "kd_rev"
    assert pattern.match("2runs_kd_resnet50_224_resnet18_56_seed0_0.01").group(1) == "kd"


def test_two_stage_tas_experiments_fill_their_own_column(tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    keys = dict(MODEL__ARCH_T="resnet50", MODEL__ARCH_S="resnet18", MODEL__ARCH_A="resnet18", DATA__CROP_SIZE=64,
                DATA__LESSEN_RATIO=2.0)
    _experiment(root, "cub", "2runs_tas_resnet50_64_resnet18_32_seed0_0.01", [61.0, 63.0], **keys)
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    with open(root / "summary" / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["teacher_arch"], row["student_arch"], row["tas_best_mean"]) == ("resnet50", "resnet18", "62.0")


def test_the_teacher_accuracy_is_that_of_the_checkpoint_the_pair_distilled_from(tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    used = _experiment(root, "cub", "1runs_resnet50_64_seed0_0.01", [80.0], MODEL__ARCH="resnet50", DATA__CROP_SIZE=64)
    # Another resnet50@64 teacher with more runs: the pick among teachers of that name, but not the one used.
    _experiment(root, "cub", "2runs_resnet50_64_seed1_0.01", [10.0, 12.0], MODEL__ARCH="resnet50", DATA__CROP_SIZE=64)
    _experiment(root, "cub", "2runs_kd_resnet50_64_resnet18_32_seed0_0.01", [55.0, 57.0],
                MODEL__MODELDICT_T=str(used / "ckpt" / "model_best.pth"), **DISTILL)
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    with open(root / "summary" / "summary.csv") as f:
        pair = next(r for r in csv.DictReader(f) if r["teacher_arch"])
    assert float(pair["teacher_best_acc"]) == 80.0


def test_a_row_whose_cells_distilled_from_different_teachers_says_so_and_a_copy_is_the_same_teacher(
        tmp_path, monkeypatch, capsys):
    root = tmp_path / "ckpt"
    first = _experiment(root, "cub", "1runs_resnet50_64_seed0_0.01", [80.0], MODEL__ARCH="resnet50", DATA__CROP_SIZE=64)
    again = _experiment(tmp_path / "elsewhere", "cub", "1runs_resnet50_64_seed0_0.01", [70.0], MODEL__ARCH="resnet50",
                        DATA__CROP_SIZE=64)  # the teacher trained again into another root
    kd = _experiment(root, "cub", "2runs_kd_resnet50_64_resnet18_32_seed0_0.01", [55.0, 57.0],
                     MODEL__MODELDICT_T=str(first / "ckpt" / "model_best.pth"), **DISTILL)
    isrd = _experiment(root, "cub", "2runs_isrd_resnet50_64_resnet18_32_seed0_0.01", [58.0, 60.0],
                       MODEL__MODELDICT_T=str(again / "ckpt" / "model_best.pth"), **DISTILL)
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    out, err = capsys.readouterr()
    assert (f"note: the cells of resnet50@64 -> resnet18@32 on cub distilled from different teacher checkpoints (KD "
            f"from {first / 'ckpt' / 'model_best.pth'}; ISRD from {again / 'ckpt' / 'model_best.pth'}): they compare "
            f"students of different teachers; its 'teacher top-1' is that of {first}") in err
    assert "| cub | resnet50@64 | 80.00 |" in out
    # The same file's content under another path (inputs.json records its SHA-256): one teacher, no note.
    for folder in (kd, isrd):
        (folder / "inputs.json").write_text(json.dumps({"MODEL.MODELDICT_T": {"path": "x", "sha256": "ab" * 32}}))
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    assert "different teacher" not in capsys.readouterr().err
    # The same path, trained again in place between the two (their SHA-256s differ): two teachers.
    shutil.rmtree(isrd)
    isrd = _experiment(root, "cub", "2runs_isrd_resnet50_64_resnet18_32_seed0_0.01", [58.0, 60.0],
                       MODEL__MODELDICT_T=str(first / "ckpt" / "model_best.pth"), **DISTILL)
    (isrd / "inputs.json").write_text(json.dumps({"MODEL.MODELDICT_T": {"path": "x", "sha256": "cd" * 32}}))
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    assert (f"(KD from {first / 'ckpt' / 'model_best.pth'} (SHA-256 abababababab); ISRD from "
            f"{first / 'ckpt' / 'model_best.pth'} (SHA-256 cdcdcdcdcdcd))") in capsys.readouterr().err
    # A TAS stage 2 records no MODELDICT_T (it reads its assistant): the same path as KD's is the same teacher.
    shutil.rmtree(isrd)
    _experiment(root, "cub", "2runs_tas_resnet50_64_resnet18_32_seed0_0.01", [59.0, 61.0],
                MODEL__MODELDICT_T=str(first / "ckpt" / "model_best.pth"), MODEL__ARCH_A="resnet18", **DISTILL)
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    out, err = capsys.readouterr()
    assert "different teacher" not in err and "| cub | resnet50@64 | 80.00 |" in out


def test_cells_are_grouped_by_teacher_whatever_their_order():
    # KD from a node's copy (SHA-256 X recorded), SP from the file under the root (X), AT an older experiment of
    # that file without inputs.json: one teacher. In KD, AT, SP order AT made a second group ("different teacher
    # checkpoints", and the row's teacher top-1 from the generic pick).
    from lib.analysis.summary import ExperimentResult, _teachers

    def cell(method, path, sha256):
        return ExperimentResult(f"/r/{method}", method, "cub", "resnet18", 32, "resnet50", 64, 4, {"runs": []}, 0.0,
                                teacher_file=path, teacher_sha256=sha256)

    kd, at, sp = cell("kd", "/copy/t.pth", "ab" * 32), cell("at", "/r/t.pth", None), cell("sp", "/r/t.pth", "ab" * 32)
    for cells in itertools.permutations([kd, at, sp]):
        assert [sorted(e.method for e in group) for group in _teachers(list(cells))] == [["at", "kd", "sp"]]
    # The same path trained again in place (another SHA-256) stays another teacher, whatever the order.
    again = cell("dkd", "/r/t.pth", "cd" * 32)
    for cells in itertools.permutations([kd, sp, again]):
        groups = sorted(sorted(e.method for e in group) for group in _teachers(list(cells)))
        assert groups == [["dkd"], ["kd", "sp"]]


def test_the_teacher_accuracy_of_a_pair_that_distilled_from_a_copy_is_that_of_the_experiment_that_made_it(
        tmp_path, monkeypatch, capsys):
    root = tmp_path / "ckpt"
    teacher = _experiment(root, "cub", "2runs_resnet50_64_seed0_0.01", [70.0, 74.0], MODEL__ARCH="resnet50",
                          DATA__CROP_SIZE=64)
    for run, content in ((0, b"teacher run 0"), (1, b"teacher run 1")):
        (teacher / "ckpt" / f"run{run}").mkdir(exist_ok=True)
        (teacher / "ckpt" / f"run{run}" / "model_best.pth").write_bytes(content)
    # Distilled from a copy of run 1's checkpoint on a node's own disk, gone since; inputs.json holds its SHA-256.
    isrd = _experiment(root, "cub", "2runs_isrd_resnet50_64_resnet18_32_seed0_0.01", [58.0, 60.0],
                       MODEL__MODELDICT_T="/scratch/job7/teacher.pth", **DISTILL)
    (isrd / "inputs.json").write_text(json.dumps({"MODEL.MODELDICT_T": {
        "path": "/scratch/job7/teacher.pth", "sha256": hashlib.sha256(b"teacher run 1").hexdigest()}}))
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    assert "| cub | resnet50@64 | 74.00 |" in capsys.readouterr().out  # run 1's, not the mean 72.00 or "–"
    (isrd / "inputs.json").write_text(json.dumps({"MODEL.MODELDICT_T": {"path": "x", "sha256": "ab" * 32}}))
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    assert "| cub | resnet50@64 | – |" in capsys.readouterr().out  # another teacher's copy: not this one's
    # A TAS stage 2 without a teacher, from a copy of its assistant: the stage-1 experiment that trained it.
    stage1 = _experiment(root, "cub", "1runs_kd_resnet50_64_resnet34_64_seed0_0.01", [66.0], MODEL__ARCH_T="resnet50",
                         MODEL__ARCH_S="resnet34", DATA__CROP_SIZE=64)
    (stage1 / "ckpt" / "model_best.pth").write_bytes(b"assistant")
    tas = _experiment(root, "cub", "2runs_tas_resnet34_64_resnet18_32_seed0_0.01", [50.0, 52.0],
                      MODEL__MODELDICT_A="/scratch/job8/assistant.pth",
                      **{**DISTILL, "MODEL__ARCH_T": "resnet34", "MODEL__ARCH_A": "resnet34"})
    (tas / "inputs.json").write_text(json.dumps({"MODEL.MODELDICT_A": {
        "path": "/scratch/job8/assistant.pth", "sha256": hashlib.sha256(b"assistant").hexdigest()}}))
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    assert "| cub | resnet34@64 | 66.00 |" in capsys.readouterr().out


def test_a_teacher_trained_again_in_place_after_its_students_is_not_shown_as_theirs(tmp_path, monkeypatch, capsys):
    # BASIC.FRESH_START True retrained the teacher into its folder (the old one moved aside, .old1, skipped): the
    # row showed the new teacher's top-1 beside students of the old one.
    root = tmp_path / "ckpt"
    teacher = _experiment(root, "cub", "1runs_resnet50_64_seed0_0.01", [80.0], MODEL__ARCH="resnet50",
                          DATA__CROP_SIZE=64)
    checkpoint = teacher / "ckpt" / "model_best.pth"
    checkpoint.write_bytes(b"the teacher trained again")
    old = hashlib.sha256(b"the first teacher").hexdigest()
    kd = _experiment(root, "cub", "2runs_kd_resnet50_64_resnet18_32_seed0_0.01", [55.0, 57.0],
                     MODEL__MODELDICT_T=str(checkpoint), **DISTILL)
    (kd / "inputs.json").write_text(json.dumps({"MODEL.MODELDICT_T": {"path": str(checkpoint), "sha256": old}}))
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    out, err = capsys.readouterr()
    now = hashlib.sha256(b"the teacher trained again").hexdigest()
    assert "| cub | resnet50@64 | – |" in out
    assert (f"note: {checkpoint} was trained again after the cells of resnet50@64 -> resnet18@32 on cub distilled "
            f"from it (SHA-256 {old[:12]} then, {now[:12]} now): {teacher} holds the new teacher, so the row's "
            "'teacher top-1' is not shown") in err
    # The first teacher kept under the root (a copy of the folder moved aside): its accuracy, found by content.
    first = _experiment(root, "cub", "1runs_resnet50_64_seed0_0.01_first", [70.0], MODEL__ARCH="resnet50",
                        DATA__CROP_SIZE=64)
    (first / "ckpt" / "model_best.pth").write_bytes(b"the first teacher")
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    out, err = capsys.readouterr()
    assert "| cub | resnet50@64 | 70.00 |" in out and f"'teacher top-1' is that of {first}, which holds it" in err
    # Unchanged since: its own folder's, no note.
    (kd / "inputs.json").write_text(json.dumps({"MODEL.MODELDICT_T": {"path": str(checkpoint), "sha256": now}}))
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    out, err = capsys.readouterr()
    assert "| cub | resnet50@64 | 80.00 |" in out and "trained again" not in err


def test_the_teacher_accuracy_of_one_run_of_a_multi_run_teacher_experiment_is_that_runs(tmp_path, monkeypatch, capsys):
    root = tmp_path / "ckpt"
    used = _experiment(root, "cub", "3runs_resnet50_64_seed0_0.01", [20.0, 35.0, 32.0], MODEL__ARCH="resnet50",
                       DATA__CROP_SIZE=64)
    _experiment(root, "cub", "2runs_kd_resnet50_64_resnet18_32_seed0_0.01", [55.0, 57.0],
                MODEL__MODELDICT_T=str(used / "ckpt" / "run1" / "model_best.pth"), **DISTILL)
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    with open(root / "summary" / "summary.csv") as f:
        pair = next(r for r in csv.DictReader(f) if r["teacher_arch"])
    assert float(pair["teacher_best_acc"]) == 35.0  # run 1's, not the mean 29.0
    assert "| cub | resnet50@64 | 35.00 |" in capsys.readouterr().out


def test_unfinished_and_damaged_experiments_are_named_on_stderr_and_the_rest_is_tabled(tmp_path, monkeypatch, capsys):
    root = tmp_path / "ckpt"
    _experiment(root, "cub", "2runs_resnet18_32_seed0_0.01", [50.0, 52.0], MODEL__ARCH="resnet18", DATA__CROP_SIZE=32)
    running = _experiment(root, "cub", "2runs_kd_resnet50_64_resnet18_32_seed0_0.01", [55.0, 57.0], **DISTILL)
    (running / "results.json").unlink()  # run 0 finished, run 1 still training
    (running / "ckpt" / "run0" / "result.json").write_text(json.dumps(
        {"run": 0, "seed": 0, "best_acc": 55.0, "best_epoch": 1, "last_acc": 55.0}))
    (running / "ckpt" / "run1").mkdir()
    (running / "ckpt" / "run1" / "result.json").write_text("{}")  # damaged: not a finished run
    broken = _experiment(root, "cub", "2runs_sp_resnet50_64_resnet18_32_seed0_0.01", [58.0, 60.0], **DISTILL)
    (broken / "config.yaml").write_text("MODEL: [\n")
    nulls = _experiment(root, "cub", "2runs_isrd_resnet50_64_resnet18_32_seed0_0.01", [58.0, 60.0], **DISTILL)
    (nulls / "results.json").write_text(json.dumps({"runs": [], "best_acc_mean": None, "best_acc_std": None,
                                                     "last_acc_mean": None, "last_acc_std": None}))
    listed = _experiment(root, "cub", "2runs_dkd_resnet50_64_resnet18_32_seed0_0.01", [58.0, 60.0], **DISTILL)
    (listed / "results.json").write_text("[58.0, 60.0]")
    runless = _experiment(root, "cub", "2runs_at_resnet50_64_resnet18_32_seed0_0.01", [58.0, 60.0], **DISTILL)
    (runless / "results.json").write_text(json.dumps({"runs": [{"run": 0, "best_acc": "58"}], "best_acc_mean": 58.0,
                                                      "best_acc_std": 0.0, "last_acc_mean": 58.0, "last_acc_std": 0.0}))
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    err = capsys.readouterr().err
    assert f"note: {running} is not finished (1 run done, no results.json)" in err
    assert f"skipped: cannot read the experiment in {broken} (ParserError: while parsing " in err
    assert (f"skipped: cannot read the experiment in {nulls} (ValueError: results.json lacks a number in "
            "best_acc_mean, best_acc_std, last_acc_mean, last_acc_std)") in err
    assert (f"skipped: cannot read the experiment in {listed} (ValueError: results.json holds a JSON list, not an "
            "object)") in err
    assert (f"skipped: cannot read the experiment in {runless} (ValueError: run 0 of results.json lacks a number in "
            "seed, best_acc, best_epoch, last_acc)") in err
    with open(root / "summary" / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["student_best_mean"]) == 51.0 and row["kd_best_mean"] == "" and row["isrd_best_mean"] == ""
    assert row["dkd_best_mean"] == "" and row["sp_best_mean"] == ""


def test_an_experiment_a_process_trains_now_is_named_so(tmp_path):
    from lib.engine.checkpoint import ExperimentLock

    root = tmp_path / "ckpt"
    running = _experiment(root, "cub", "2runs_kd_resnet50_64_resnet18_32_seed0_0.01", [55.0, 57.0], **DISTILL)
    (running / "results.json").unlink()
    (running / "train.log").write_text(f"2026-12-06 10:00:00 {INTERRUPTED_LINE}\n")  # an earlier attempt's end
    teacher = _experiment(root, "cub", "1runs_resnet50_64_seed0_0.01", [80.0], MODEL__ARCH="resnet50")
    (teacher / "results.json").unlink()
    (teacher / "ckpt").mkdir(exist_ok=True)
    (teacher / "ckpt" / "result.json").write_text(json.dumps(  # the teacher's one run sits in ckpt/ itself
        {"run": 0, "seed": 0, "best_acc": 80.0, "best_epoch": 1, "last_acc": 80.0}))
    lock = ExperimentLock()
    lock.take(str(running))  # as the trainer holds it while it trains
    try:
        notes = []
        find_experiments(str(root), warn=notes.append)
    finally:
        lock.release()
    assert notes == [f"note: {teacher} is not finished (1 run done, no results.json); it is not in the table",
                     f"note: {running} is training now (pid {os.getpid()}) (0 runs done); it is not in the table"]


def test_a_teacherless_tas_rows_teacher_accuracy_is_its_assistants_and_none_for_a_checkpoint_not_found(
        tmp_path, monkeypatch):
    # Stage 2 without a teacher: the assistant (stage 1's KD experiment) stands in the teacher's place. Before, a
    # plain resnet18@64 run of the same name showed there instead.
    root = tmp_path / "ckpt"
    _experiment(root, "cub", "1runs_resnet18_64_seed0_0.01", [10.0], MODEL__ARCH="resnet18", DATA__CROP_SIZE=64)
    assistant = _experiment(root, "cub", "1runs_kd_resnet50_64_resnet18_64_seed0_0.01", [70.0],
                            MODEL__ARCH_T="resnet50", MODEL__ARCH_S="resnet18", DATA__CROP_SIZE=64)
    tas = dict(MODEL__ARCH_T="resnet18", MODEL__ARCH_S="resnet18", MODEL__ARCH_A="resnet18", DATA__CROP_SIZE=64,
               DATA__LESSEN_RATIO=2.0)
    _experiment(root, "cub", "2runs_tas_resnet18_64_resnet18_32_seed0_0.01", [61.0, 63.0],
                MODEL__MODELDICT_A=str(assistant / "ckpt" / "model_best.pth"), **tas)
    _experiment(root, "aircraft", "2runs_tas_resnet18_64_resnet18_32_seed0_0.01", [41.0, 43.0],
                MODEL__MODELDICT_A="/elsewhere/ckpt/model_best.pth", **tas)
    _experiment(root, "aircraft", "1runs_resnet18_64_seed0_0.01", [10.0], MODEL__ARCH="resnet18", DATA__CROP_SIZE=64)
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    with open(root / "summary" / "summary.csv") as f:
        rows = {r["dataset"]: r for r in csv.DictReader(f) if r["tas_best_mean"]}
    assert float(rows["cub"]["teacher_best_acc"]) == 70.0
    assert rows["aircraft"]["teacher_best_acc"] == ""


def test_summarize_leaves_the_demo_out_of_the_papers_table_unless_asked_for_it(tmp_path):
    _experiment(tmp_path, "cub", "1runs_resnet50_64_seed0_0.01", [80.0])
    _experiment(tmp_path / "demo", "cub", "5runs_resnet18_32_seed0_0.05", [45.0, 40.0])
    warnings = []
    found = find_experiments(str(tmp_path), warn=warnings.append)
    assert [Path(e.path).name for e in found] == ["1runs_resnet50_64_seed0_0.01"]
    assert len(warnings) == 1 and "demo" in warnings[0] and f"--root {tmp_path / 'demo'}" in warnings[0]
    found = find_experiments(str(tmp_path / "demo"), warn=warnings.append)
    assert [Path(e.path).name for e in found] == ["5runs_resnet18_32_seed0_0.05"]


def test_summarize_follows_links_to_roots_and_reads_each_experiment_once(tmp_path):
    # A sweep's roots gathered as links in one folder, one of them linked twice, and a link back up (a loop).
    _experiment(tmp_path / "eta10", "cub", "5runs_resnet18_32_seed0_0.05", [45.0, 40.0])
    _experiment(tmp_path / "eta50", "cub", "1runs_resnet50_64_seed0_0.01", [80.0])
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    for name, target in (("a", "eta10"), ("b", "eta50"), ("b_again", "eta50"), ("up", "gathered")):
        (gathered / name).symlink_to(tmp_path / target, target_is_directory=True)
    found = find_experiments(str(gathered), warn=lambda message: None)
    assert sorted(Path(e.path).name for e in found) == ["1runs_resnet50_64_seed0_0.01", "5runs_resnet18_32_seed0_0.05"]


def test_cost_table_puts_flops_and_macs_in_their_own_columns():
    row = {"arch": "resnet18", "size": 32, "params": 11_200_000, "flops": 4_000_000_000, "macs": 2_000_000_000,
           "input_pixels": 1024, "input_bytes": 3072, "latency_ms": {1: 1.5}, "peak_mem_mb": {1: 2.25}}
    meta = {"batch_sizes": [1], "device_name": "cpu", "device": "cpu", "torch": "x", "cpu_threads": 2, "repeats": 1,
            "warmup": 0, "memory_method": "m"}
    lines = format_markdown([row], meta).splitlines()
    assert lines[0] == ("| arch | size | params (M) | GFLOPs | GMACs | pixels | input bytes | latency b1 (ms) | "
                        "peak act. mem b1 (MiB) |")
    assert lines[2] == "| resnet18 | 32 | 11.2 | 4.0 | 2.0 | 1024 | 3072 | 1.5 | 2.25 |"  # by hand


def test_an_experiment_from_before_inputs_json_shows_its_teachers_accuracy_without_a_note(tmp_path, monkeypatch,
                                                                                            capsys):
    # No inputs.json (an older version's experiment): nothing to tell a teacher trained again by; the path decides.
    root = tmp_path / "ckpt"
    teacher = _experiment(root, "cub", "1runs_resnet50_64_seed0_0.01", [80.0], MODEL__ARCH="resnet50",
                          DATA__CROP_SIZE=64)
    checkpoint = teacher / "ckpt" / "model_best.pth"
    checkpoint.write_bytes(b"the teacher")
    _experiment(root, "cub", "2runs_kd_resnet50_64_resnet18_32_seed0_0.01", [55.0, 57.0],
                MODEL__MODELDICT_T=str(checkpoint), **DISTILL)
    assert _run(SUMMARIZE, "--root", str(root), monkeypatch=monkeypatch) == 0
    out, err = capsys.readouterr()
    assert "| cub | resnet50@64 | 80.00 |" in out and "trained again" not in err


def _scores(preds, num_classes):
    return torch.nn.functional.one_hot(torch.tensor(preds), num_classes).float()


def test_per_class_rows_give_f1_and_the_class_each_true_class_is_most_often_taken_for():
    # true 0, 0, 0, 1 predicted 2, 2, 0, 0: class a is taken for c twice (its row), while b is taken for a once
    # (a's column): by hand precision a = 1/2, recall a = 1/3, F1 a = 0.4; b: nothing right; c: never true.
    report = classification_report(_scores([2, 2, 0, 0], 3), torch.tensor([0, 0, 0, 1]), ["a", "b", "c"])
    a, b, c = report["per_class"]
    assert (a["most_confused_with"], a["confused_count"]) == ("c", 2)
    assert (b["most_confused_with"], b["confused_count"]) == ("a", 1)
    assert (c["most_confused_with"], c["confused_count"]) == ("", 0)
    assert (a["precision"], a["f1"]) == (pytest.approx(50.0), pytest.approx(40.0))
    assert (b["precision"], b["f1"], c["precision"], c["f1"]) == (0.0, 0.0, 0.0, 0.0)


def test_the_confusion_plot_normalises_each_true_class_row_to_one(tmp_path, monkeypatch):
    shown = []
    real = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda self, data, *a, **k: (shown.append(np.asarray(data)), real(self, data, *a, **k))[1])
    confusion = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    plot_confusion(confusion, ["a", "b", "c"], str(tmp_path / "c.png"), "t")
    np.testing.assert_allclose(shown[0], [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 0.5]])


def test_latency_is_the_median_of_the_timed_runs_after_untimed_warmup_runs(monkeypatch):
    calls = []
    model = lambda x: calls.append(1)  # noqa: E731
    # perf_counter pairs (start, end) of three timed runs: 1 ms, 100 ms, 2 ms; the warm-up runs are not timed.
    ticks = iter([0.0, 0.001, 1.0, 1.1, 2.0, 2.002])
    monkeypatch.setattr(cost.time, "perf_counter", lambda: next(ticks))
    ms = cost.median_latency_ms(model, torch.zeros(1), warmup=2, repeats=3)
    assert len(calls) == 5 and ms == pytest.approx(2.0)


def test_cuda_peak_activation_memory_excludes_what_was_allocated_before_the_forward(monkeypatch):
    # Runs without a GPU: torch.cuda's statistics are stood in for; 1000 bytes (weights, input) were there before.
    class FakeInput:
        device = torch.device("cuda", 0)

    monkeypatch.setattr(cost.torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(cost.torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(cost.torch.cuda, "memory_allocated", lambda device=None: 1000)
    monkeypatch.setattr(cost.torch.cuda, "max_memory_allocated", lambda device=None: 5000)
    assert cost.peak_activation_bytes(lambda x: None, FakeInput()) == 4000


def test_a_cuda_device_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(cost.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cost.torch.cuda, "device_count", lambda: 1)
    assert cost.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(cost.UserError, match="this machine has 1 CUDA device"):
        cost.resolve_device("cuda:1")


def test_the_flat_cost_row_puts_each_measurement_under_its_own_column():
    row = {"arch": "resnet18", "size": 32, "params": 1, "flops": 4, "macs": 2, "input_pixels": 1024,
           "input_bytes": 3072, "latency_ms": {1: 1.23456, 8: 7.5}, "peak_mem_mb": {1: 0.5, 8: 4.0004}}
    assert cost._flat(row, [1, 8]) == {"arch": "resnet18", "size": 32, "params": 1, "flops": 4, "macs": 2,
                                       "input_pixels": 1024, "input_bytes": 3072,
                                       "latency_ms_b1": 1.2346, "latency_ms_b8": 7.5,
                                       "peak_mem_mb_b1": 0.5, "peak_mem_mb_b8": 4.0}


def test_a_cnn_above_224_px_is_estimated_to_need_activation_memory_in_proportion_to_its_area(monkeypatch):
    # Measured at 224 px (1,000,000 bytes), 448 px needs 4x that plus the input (2,408,448 bytes): 6.4 MB, not 4.4 MB.
    monkeypatch.setattr(cost, "peak_activation_bytes", lambda model, x: 1_000_000)
    monkeypatch.setattr(cost, "available_memory_bytes", lambda: 5_000_000)
    with pytest.raises(cost.UserError, match="resnet18 @ 448 px needs about"):
        cost.check_fits_in_memory("resnet18", 448, 1, 4)
    monkeypatch.setattr(cost, "available_memory_bytes", lambda: 6_500_000)
    cost.check_fits_in_memory("resnet18", 448, 1, 4)


def test_a_tool_output_on_a_full_disk_is_one_line_naming_it_and_the_previous_file_stays(tmp_path, monkeypatch):
    # cost.csv and the summary tables were opened, then written: a full disk left them empty, in a line that named
    # no file.
    import errno

    from lib.analysis import write_csv
    from lib.engine import checkpoint
    from lib.utils.errors import UserError

    path = tmp_path / "cost.csv"
    write_csv(str(path), ["arch", "gflops"], [["resnet18", 1.8]])
    previous = path.read_bytes()

    def full(fd, mode):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fdopen", full)
    with pytest.raises(UserError, match=f"no space left on the device while writing {path}; the previous file is "
                                        "intact"):
        write_csv(str(path), ["arch", "gflops"], [["resnet50", 4.1]])
    monkeypatch.undo()
    assert path.read_bytes() == previous == b"arch,gflops\r\nresnet18,1.8\r\n"
    assert os.listdir(tmp_path) == ["cost.csv"]
