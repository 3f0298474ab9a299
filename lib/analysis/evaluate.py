"""Evaluate a saved checkpoint on the test split: top-1, top-5, mean per-class accuracy, per-class report, confusion.

The network is MODEL.ARCH_S when set, else MODEL.ARCH, fed the student's test view (Resize(RESIZE_SIZE / K) +
CenterCrop(CROP_SIZE / K), K = DATA.LESSEN_RATIO), exactly the trainer's test input. The usual config is the
experiment's own config.yaml, so the checkpoint is evaluated at the resolution it was trained for:

    python tools/eval.py --config_file ckpt/cub/<experiment>/config.yaml \
        TEST.CHECKPOINT ckpt/cub/<experiment>/ckpt/run0/model_best.pth

Outputs go beside the checkpoint, in <checkpoint folder>/eval/<checkpoint name>_<size>px/:
    metrics.json          top-1, top-5, mean per-class accuracy (%), counts, and the per-class rows
    per_class.csv         per class: support, correct, accuracy (= recall), precision, F1, most confused class
    confusion_matrix.csv  counts, rows = true class, columns = predicted class (scikit-learn's convention)
    confusion_matrix.png  the matrix normalised per row (each true class sums to 1)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from lib.config import resolve_path, small_crop_size
from lib.datasets import BatchPreparer, build_dataset
from lib.engine.checkpoint import save_json
from lib.engine.setup import select_device, use_device
from lib.engine.trainer import build_loader
from lib.models.model_builder import check_input_size
from lib.models.weights import load_network
from lib.utils.errors import UserError, make_folder, require_file, signal_safe_iter
from lib.utils.log import get_logger

from . import write_csv, write_output

__all__ = ["eval_dir", "predict", "classification_report", "plot_confusion", "write_report", "evaluate_checkpoint"]

# Up to this many classes the confusion-matrix plot names its ticks, up to ANNOTATE_MAX it prints the counts.
TICK_LABELS_MAX = 40
ANNOTATE_MAX = 20


def eval_dir(checkpoint: str, size: int) -> str:
    """<checkpoint folder>/eval/<checkpoint name without extension>_<size>px."""
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "eval", f"{stem}_{size}px")


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, prep: BatchPreparer) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and targets (N,) of the whole loader, on the CPU."""
    model.eval()
    scores, targets = [], []
    for batch in signal_safe_iter(loader):
        batch = prep(batch)
        scores.append(model(batch["image"]).float().cpu())
        targets.append(batch["target"].cpu())
    return torch.cat(scores), torch.cat(targets)


def classification_report(scores: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Top-1 / top-5 / mean per-class accuracy (%), per-class rows and the confusion matrix (counts).

    Mean per-class accuracy is the mean, over the classes that have test images, of each class's accuracy
    (its recall); it weighs rare classes as much as common ones.
    """
    num_classes = len(classes)
    labels = list(range(num_classes))
    y_true = targets.numpy()
    y_pred = scores.argmax(1).numpy()
    k = min(5, num_classes)
    top5 = (scores.topk(k, dim=1).indices == targets[:, None]).any(1).double().mean().item() * 100.0
    confusion = confusion_matrix(y_true, y_pred, labels=labels)  # (C, C): rows true, columns predicted
    precision, _, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    support = confusion.sum(1)
    correct = np.diag(confusion)
    present = support > 0
    per_class_acc = np.where(present, correct / np.maximum(support, 1), 0.0)
    off_diagonal = confusion - np.diag(correct)
    rows = []
    for c in labels:
        confused = int(off_diagonal[c].argmax()) if off_diagonal[c].any() else None
        rows.append({
            "class_index": c,
            "class_name": classes[c],
            "support": int(support[c]),
            "correct": int(correct[c]),
            "accuracy": round(float(per_class_acc[c]) * 100.0, 4) if present[c] else None,
            "precision": round(float(precision[c]) * 100.0, 4),
            "f1": round(float(f1[c]) * 100.0, 4),
            "most_confused_with": classes[confused] if confused is not None else "",
            "confused_count": int(off_diagonal[c, confused]) if confused is not None else 0,
        })
    return {
        "num_images": int(len(y_true)),
        "num_classes": num_classes,
        "classes_in_test": int(present.sum()),
        "top1": float((y_pred == y_true).mean() * 100.0),
        "top5": top5,
        "mean_per_class_acc": float(per_class_acc[present].mean() * 100.0) if present.any() else 0.0,
        "per_class": rows,
        "confusion": confusion,
    }


def plot_confusion(confusion: np.ndarray, classes: list[str], path: str, title: str) -> None:
    """Save the row-normalised confusion matrix as a PNG (matplotlib's Agg canvas, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    side = min(max(6.0, 0.3 * n + 2.0), 20.0)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= TICK_LABELS_MAX:
        names = [name if len(name) <= 24 else name[:23] + "…" for name in classes]
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    if n <= ANNOTATE_MAX:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    write_output(path, lambda f: fig.savefig(f, format="png", dpi=120))


def write_report(report: dict[str, Any], meta: dict[str, Any], classes: list[str], out_dir: str) -> list[str]:
    """Write metrics.json, per_class.csv, confusion_matrix.csv and .png into `out_dir`; returns the paths."""
    make_folder(out_dir)
    paths = [os.path.join(out_dir, name) for name in
             ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png")]
    summary = {k: v for k, v in report.items() if k != "confusion"}
    save_json({**meta, **summary}, paths[0])
    headers = list(report["per_class"][0])
    write_csv(paths[1], headers, [["" if r[h] is None else r[h] for h in headers] for r in report["per_class"]])
    write_csv(paths[2], ["true \\ predicted", *classes],
              [[name, *map(int, row)] for name, row in zip(classes, report["confusion"])])
    title = (f"{meta['arch']} @ {meta['input_size']} px, {meta['dataset']} test: "
             f"top-1 {report['top1']:.2f}%, mean per-class {report['mean_per_class_acc']:.2f}%")
    plot_confusion(report["confusion"], classes, paths[3], title)
    return paths


def evaluate_checkpoint(cfg: CfgNode, out_dir: str | None = None) -> dict[str, Any]:
    """Evaluate TEST.CHECKPOINT on the test split of DATA.DATASET and write the report beside it (or to `out_dir`).

    Args:
        cfg: the frozen config; MODEL.ARCH_S (else MODEL.ARCH), DATA.*, TEST.CHECKPOINT, TEST.BATCH_SIZE and
            BASIC.DEVICE / GPU_ID are read.
        out_dir: the report's folder (tools/eval.py --out); None: <checkpoint folder>/eval/<name>_<size>px.
    Returns:
        metrics.json's content plus "out_dir".
    """
    log = get_logger()
    if not cfg.TEST.CHECKPOINT.strip():
        raise UserError("TEST.CHECKPOINT is empty; name the checkpoint to evaluate, e.g. TEST.CHECKPOINT "
                        "ckpt/cub/<experiment>/ckpt/run0/model_best.pth")
    arch = cfg.MODEL.ARCH_S or cfg.MODEL.ARCH
    if not arch:
        raise UserError("MODEL.ARCH_S and MODEL.ARCH are empty; name the checkpoint's architecture")
    path = resolve_path(cfg.TEST.CHECKPOINT)
    require_file(path, "checkpoint TEST.CHECKPOINT")
    size = small_crop_size(cfg)
    check_input_size(arch, size)
    num_classes = cfg.DATA.NUM_CLASSES

    model, ckpt = load_network(arch, num_classes, path, "checkpoint TEST.CHECKPOINT", size,
                               "DATA.CROP_SIZE / DATA.LESSEN_RATIO; give the experiment's config.yaml to match")
    test_set = build_dataset(cfg, is_train=False)
    out_dir = os.path.abspath(out_dir) if out_dir else eval_dir(path, size)
    make_folder(out_dir, "--out")  # before the test pass: a read-only checkpoint folder is said at once
    device = select_device(cfg)
    use_device(device)
    model = model.to(device)
    scores, targets = predict(model, build_loader(cfg, test_set, False, device), BatchPreparer(cfg, device))
    report = classification_report(scores, targets, list(test_set.classes))
    meta = {"checkpoint": path, "arch": arch, "input_size": size, "dataset": cfg.DATA.DATASET, "split": "test",
            "datadir": resolve_path(cfg.DATA.DATADIR), "epoch": ckpt.get("epoch"),
            # The run's best test top-1 as the checkpoint records it: these weights' own score for a model_best.pth,
            # the best of the epochs up to "epoch" for a last.pth (whose weights score top1 here).
            "run_best_acc": ckpt.get("best_acc")}
    write_report(report, meta, list(test_set.classes), out_dir)
    log.info(f"{arch} @ {size} px, {cfg.DATA.DATASET} test split ({report['num_images']} images, "
             f"{report['num_classes']} classes), checkpoint {path}")
    log.info(f"top-1 {report['top1']:.2f}   top-5 {report['top5']:.2f}   "
             f"mean per-class {report['mean_per_class_acc']:.2f}")
    log.info(f"wrote metrics.json, per_class.csv, confusion_matrix.csv, confusion_matrix.png to {out_dir}")
    return {**meta, **{k: v for k, v in report.items() if k != "confusion"}, "out_dir": out_dir}
