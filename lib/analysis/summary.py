"""Collect every experiment under an output root into the paper's table, and plot accuracy against cost.

An experiment is a folder holding results.json and config.yaml (what run_experiment writes). Its networks, sizes
and dataset are read from config.yaml; only the distillation method, which the config does not record for ISRD
(tools_1_ts/train_isrd_5runs.py ignores MODEL.KDTYPE), is read from the folder name
<n>runs_<method>_<teacher>_... . Folders moved aside by BASIC.FRESH_START (<name>.old<k>) are skipped.

Rows: dataset, teacher@size -> student@size, one per distillation pair. Columns: the student baseline (the
single-network experiment of the student's architecture at the student's size, same dataset), then KD, AT, SP,
ICKD, DKD, ISRD and TAS; each cell is the mean ± std over runs of the best and of the last-epoch test top-1 (%).
The teacher's accuracy is that of the experiment the row's cells distilled from (their MODEL.MODELDICT_T; for TAS
without a teacher, the assistant's MODEL.MODELDICT_A).
Single-network experiments that are no pair's student baseline (teachers, unpaired baselines) get rows of their
own, without a teacher. When several experiments fill one cell (other seeds or learning rates), the one with the
most runs, then the newest results.json, is shown and the others are listed on stderr.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yacs.config import CfgNode

from lib.config import KDTYPES, resolve_path, small_crop_size
from lib.engine.checkpoint import load_json_object, load_results, load_run_result, lock_holder
from lib.utils.errors import UserError, first_line
from lib.utils.files import file_digest, run_folders, run_index
from lib.utils.log import ERROR_PREFIX, FRESH_START_INTERRUPTED_LINE, INTERRUPTED_LINE

from . import check_output_root, markdown_table, write_csv, write_output, write_text
from .cost import flops_of, input_cost

__all__ = ["METHOD_COLUMNS", "ExperimentResult", "Row", "find_experiments", "build_rows", "format_markdown",
           "write_summary", "plot_accuracy_vs_cost", "summarize"]

# Table columns in the paper's order; "student" is the student's own single-network baseline. A method added to
# lib.config.KDTYPES gets its column and its label (its name in capitals) from there.
METHOD_COLUMNS = ("student", *KDTYPES, "isrd", "tas")
METHOD_LABELS = {"student": "baseline", **{method: method.upper() for method in METHOD_COLUMNS[1:]}}


def distill_name_pattern(methods: Iterable[str]) -> re.Pattern:
    """The pattern of a distillation experiment's folder name, <n>runs_<method>_..., its group the method: the
    longest name tried first, so that a method added as "kd_rev" is not taken for KD."""
    return re.compile(rf"\d+runs_({'|'.join(sorted(methods, key=len, reverse=True))})_")


_DISTILL_NAME = distill_name_pattern(METHOD_COLUMNS[1:])
_MOVED_ASIDE = re.compile(r".*\.old\d+")
_DEMO_FOLDER = "demo"  # ckpt/demo, the BASIC.OUTPUT_ROOT of configs/demo/*


@dataclass
class ExperimentResult:
    """One experiment folder: what it trained and its results.json."""

    path: str
    method: str  # "single" or a distillation method
    dataset: str
    arch: str  # the student (or the single network)
    size: int
    teacher: str | None
    teacher_size: int | None
    num_classes: int
    results: dict
    mtime: float
    teacher_dir: str | None = None  # the experiment folder MODEL.MODELDICT_T points into (<folder>/ckpt/...)
    teacher_run: int | None = None  # the run whose checkpoint that is (<folder>/ckpt/run<i>/...), None for ckpt/
    teacher_file: str | None = None  # that checkpoint (its real path)
    teacher_sha256: str | None = None  # what it held when the experiment started (inputs.json), if recorded

    @property
    def runs(self) -> int:
        """Number of finished runs."""
        return len(self.results["runs"])


@dataclass
class Row:
    """One table row: a teacher -> student pair (teacher None for a lone single-network experiment)."""

    dataset: str
    arch: str
    size: int
    teacher: str | None = None
    teacher_size: int | None = None
    teacher_result: ExperimentResult | None = None
    teacher_run: int | None = None  # the teacher's run the cells distilled from (None: its mean over runs)
    cells: dict[str, ExperimentResult] = field(default_factory=dict)

    @property
    def teacher_acc(self) -> float | None:
        """Best test top-1 of the teacher checkpoint the cells distilled from (of one run when they name one)."""
        if self.teacher_result is None:
            return None
        results = self.teacher_result.results
        if self.teacher_run is None:
            return results["best_acc_mean"]
        run = next((r for r in results["runs"] if r["run"] == self.teacher_run), None)
        return run["best_acc"] if run else None

    @property
    def num_classes(self) -> int:
        """Classifier outputs of the student (from any of its experiments)."""
        return next(iter(self.cells.values())).num_classes


def _teacher_source(checkpoint: str) -> tuple[str, int | None]:
    """(experiment folder, run) of a teacher checkpoint <folder>/ckpt/model_best.pth (run None) or
    <folder>/ckpt/run<i>/model_best.pth (run i)."""
    ckpt_dir = os.path.dirname(os.path.realpath(resolve_path(checkpoint)))
    run = run_index(os.path.basename(ckpt_dir))
    if run is not None:
        ckpt_dir = os.path.dirname(ckpt_dir)
    return os.path.dirname(ckpt_dir), run


def _read_experiment(folder: str) -> ExperimentResult:
    """Read results.json and config.yaml of one experiment folder (UserError if unreadable)."""
    results_path, config_path = os.path.join(folder, "results.json"), os.path.join(folder, "config.yaml")
    if not os.path.isfile(config_path):
        raise UserError(f"{folder} has results.json but no config.yaml")
    try:
        results = load_results(results_path)
        with open(config_path) as f:
            cfg = CfgNode.load_cfg(f)
        match = _DISTILL_NAME.match(os.path.basename(folder))
        distill = bool(match and cfg.MODEL.ARCH_T and cfg.MODEL.ARCH_S)
        # TAS without a teacher: the assistant takes the teacher's place (stage 2's ARCH_T), and its checkpoint too.
        teacher_key = "MODEL.MODELDICT_T" if cfg.MODEL.MODELDICT_T else "MODEL.MODELDICT_A"
        teacher_file = cfg.MODEL.MODELDICT_T or (cfg.MODEL.MODELDICT_A if distill and match.group(1) == "tas" else "")
        teacher_dir, teacher_run = _teacher_source(teacher_file) if distill and teacher_file else (None, None)
        return ExperimentResult(
            path=folder,
            method=match.group(1) if distill else "single",
            dataset=cfg.DATA.DATASET,
            arch=cfg.MODEL.ARCH_S if distill else cfg.MODEL.ARCH,
            size=small_crop_size(cfg),
            teacher=cfg.MODEL.ARCH_T if distill else None,
            teacher_size=cfg.DATA.CROP_SIZE if distill else None,
            num_classes=cfg.DATA.NUM_CLASSES,
            results=results,
            mtime=os.path.getmtime(results_path),
            teacher_dir=teacher_dir,
            teacher_run=teacher_run,
            teacher_file=os.path.realpath(resolve_path(teacher_file)) if teacher_dir else None,
            teacher_sha256=_recorded_sha256(folder, teacher_key) if teacher_dir else None,
        )
    except (OSError, ValueError, KeyError, AttributeError, TypeError, yaml.YAMLError) as err:
        raise UserError(f"cannot read the experiment in {folder} ({type(err).__name__}: {first_line(err)})") from None


def _recorded_sha256(folder: str, key: str) -> str | None:
    """The SHA-256 that an experiment's inputs.json records for the checkpoint of `key` (None if it does not)."""
    try:
        entry = load_json_object(os.path.join(folder, "inputs.json")).get(key)
    except (OSError, ValueError):  # none (an older experiment), or damaged: the path decides
        return None
    sha256 = entry.get("sha256") if isinstance(entry, dict) else None
    return sha256 if isinstance(sha256, str) else None


def find_experiments(root: str, warn: Callable[[str], object] | None = None) -> list[ExperimentResult]:
    """Every experiment (folder with results.json) under `root`; unreadable ones are reported through `warn`."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    check_output_root(root)
    found = []
    seen = set()  # real paths: links are followed (a folder of links gathers roots), each folder read once
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # reached again through a link (or a link loop)
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _MOVED_ASIDE.fullmatch(d))
        if folder == root and _DEMO_FOLDER in dirs:
            # The demo's 10-class synthetic experiments (configs/demo/*) would land in the paper's table as "cub".
            dirs.remove(_DEMO_FOLDER)
            warn(f"skipped: {os.path.join(root, _DEMO_FOLDER)} (the demo's synthetic data; --root "
                 f"{os.path.join(root, _DEMO_FOLDER)} summarizes it)")
        if "results.json" not in files:
            if "config.yaml" in files:  # an experiment still running, interrupted or failed: not in the table
                dirs[:] = []
                warn(_unfinished_note(folder))
            continue
        dirs[:] = []  # an experiment's own subfolders (ckpt/, log/) hold no experiments
        try:
            experiment = _read_experiment(folder)
        except UserError as err:
            warn(f"skipped: {err}")
            continue
        found.append(experiment)
    return found


def _finished_runs(folder: str) -> int:
    """Runs of an unfinished experiment that have written a readable result.json (ckpt/run<i>/ or the teacher's
    ckpt/)."""
    ckpt = os.path.join(folder, "ckpt")
    finished = 0
    for run_dir in [ckpt, *(path for path, _ in run_folders(ckpt))]:
        try:
            load_run_result(os.path.join(run_dir, "result.json"))
            finished += 1
        except (OSError, ValueError):  # not written yet, or damaged: the run trains again when its command resumes
            pass
    return finished


def _last_log_line(folder: str) -> str:
    """The message of train.log's last line (without its timestamp), '' when there is none."""
    try:
        with open(os.path.join(folder, "train.log"), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    # "2026-12-06 19:50:00 <message>": the date and the time, then the message.
    return lines[-1].split(" ", 2)[-1] if lines else ""


def _unfinished_note(folder: str) -> str:
    """How an experiment folder without results.json stands: training now (a process holds its lock), stopped by an
    error or interrupted (train.log's last line says so), or else not finished (killed, or its machine went down)."""
    finished = _finished_runs(folder)
    done = f"{finished} run{'' if finished == 1 else 's'} done"
    holder = lock_holder(folder)
    last = _last_log_line(folder)
    if holder:
        state = f"is training now{holder} ({done})"
    elif last.startswith(ERROR_PREFIX):
        state = f"stopped with an error ({done}): {last[len(ERROR_PREFIX):]}"
    elif last in (INTERRUPTED_LINE, FRESH_START_INTERRUPTED_LINE):
        without = " without BASIC.FRESH_START True" if last == FRESH_START_INTERRUPTED_LINE else ""
        state = f"was interrupted ({done}); re-run its command{without} to resume"
    else:
        state = f"is not finished ({done}, no results.json)"
    return f"note: {folder} {state}; it is not in the table"


def _teachers(cells: list[ExperimentResult]) -> list[list[ExperimentResult]]:
    """The cells grouped by the teacher checkpoint they distilled from: one teacher where the checkpoint's path is
    the same and no recorded SHA-256 differs (a teacher trained again in place), or where the SHA-256s that
    inputs.json recorded agree (a copy elsewhere). Groups are merged until none joins another, so that the cells'
    order does not decide (a cell without a SHA-256 at the path of a cell whose SHA-256 a copy's cell shares)."""
    groups = [[e] for e in cells]
    while pair := next(((i, j) for i, j in itertools.combinations(range(len(groups)), 2)
                        if _one_teacher(groups[i], groups[j])), None):
        groups[pair[0]] += groups.pop(pair[1])
    return groups


def _one_teacher(a: list[ExperimentResult], b: list[ExperimentResult]) -> bool:
    """Whether two groups of cells distilled from one teacher checkpoint (see _teachers)."""
    shas_a = {e.teacher_sha256 for e in a if e.teacher_sha256}
    shas_b = {e.teacher_sha256 for e in b if e.teacher_sha256}
    same_path = bool({e.teacher_file for e in a} & {e.teacher_file for e in b})
    return bool(shas_a & shas_b) or (same_path and not (shas_a and shas_b))


def _teacher_by_content(sha256: str, candidates: list[ExperimentResult], digests: dict[str, str]
                        ) -> tuple[ExperimentResult | None, int | None]:
    """(experiment, run) among `candidates` whose model_best.pth (ckpt/ or ckpt/run<i>/) has the SHA-256 `sha256`
    ((None, None) if none has); `digests` caches each file's."""
    for e in candidates:
        ckpt = os.path.join(e.path, "ckpt")
        for run_dir, run in [(ckpt, None), *run_folders(ckpt)]:
            if _digest(os.path.join(run_dir, "model_best.pth"), digests) == sha256:
                return e, run
    return None, None


def _digest(path: str, digests: dict[str, str]) -> str:
    """The SHA-256 of the file `path`, "" if there is none or it cannot be read; `digests` caches it."""
    if path not in digests:
        try:
            digests[path] = file_digest(path, "sha256")
        except OSError:  # none there (a run without one), or unreadable
            digests[path] = ""
    return digests[path]


def _pick(candidates: list[ExperimentResult], what: str, warn) -> ExperimentResult:
    """The experiment with the most runs, then the newest; the others are reported."""
    best = max(candidates, key=lambda e: (e.runs, e.mtime))
    others = [e.path for e in candidates if e is not best]
    if others:
        warn(f"note: {len(candidates)} experiments for {what}; showing {best.path}, not {', '.join(others)}")
    return best


def build_rows(experiments: list[ExperimentResult], warn: Callable[[str], object] | None = None) -> list[Row]:
    """Group experiments into table rows (see the module docstring)."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    singles: dict[tuple, list[ExperimentResult]] = defaultdict(list)
    pairs: dict[tuple, dict[str, list[ExperimentResult]]] = defaultdict(lambda: defaultdict(list))
    for e in experiments:
        if e.method == "single":
            singles[(e.dataset, e.arch, e.size)].append(e)
        else:
            pairs[(e.dataset, e.teacher, e.teacher_size, e.arch, e.size)][e.method].append(e)
    single = {key: _pick(group, f"{key[1]}@{key[2]} on {key[0]}", warn) for key, group in singles.items()}

    by_folder = {os.path.realpath(e.path): e for e in experiments}  # a TAS assistant's folder is a KD experiment
    digests: dict[str, str] = {}  # SHA-256 of the teachers' checkpoints, read once
    rows, used = [], set()
    for (dataset, teacher, teacher_size, arch, size), methods in pairs.items():
        what = f"{teacher}@{teacher_size} -> {arch}@{size} on {dataset}"
        cells = {m: _pick(group, f"{METHOD_LABELS[m]} {what}", warn) for m, group in methods.items()}
        # The teacher's accuracy: that of the experiment whose checkpoint the shown cells distilled from (their
        # MODEL.MODELDICT_T), when they agree on one: none when it is not under the root (not another teacher's of
        # the same name). Cells that name no checkpoint, or different ones: the pick among teacher@size experiments.
        teachers = _teachers([cells[m] for m in METHOD_COLUMNS if m in cells and cells[m].teacher_file])
        if len(teachers) == 1:
            e = next((e for e in teachers[0] if by_folder.get(e.teacher_dir)), teachers[0][0])
            teacher_result, teacher_run = by_folder.get(e.teacher_dir), e.teacher_run
            sha256 = next((e.teacher_sha256 for e in teachers[0] if e.teacher_sha256), None)
            now = _digest(e.teacher_file, digests) if teacher_result is not None and sha256 else ""
            # Trained again in place since (BASIC.FRESH_START moved the old one aside, skipped here): that folder's
            # accuracy is the new teacher's, not that of the one these students learnt from.
            replaced = teacher_result if now and now != sha256 else None
            if replaced is not None:
                teacher_result, teacher_run = None, None
            if teacher_result is None and sha256:  # a copy (a node's local disk): the experiment that made it
                # (The teacher's own experiments, and those that trained that network at that size by distilling
                # it: a TAS stage 1, whose assistant a stage 2 without a teacher reads.)
                teacher_result, teacher_run = _teacher_by_content(
                    sha256, [x for x in experiments if (x.dataset, x.arch, x.size) == (dataset, teacher, teacher_size)],
                    digests)
            if replaced is not None:
                shown = f"that of {teacher_result.path}, which holds it" if teacher_result else "not shown"
                warn(f"note: {e.teacher_file} was trained again after the cells of {what} distilled from it (SHA-256 "
                     f"{sha256[:12]} then, {now[:12]} now): {replaced.path} holds the new teacher, so the row's "
                     f"'teacher top-1' is {shown}")
        else:
            teacher_result, teacher_run = single.get((dataset, teacher, teacher_size)), None
        if len(teachers) > 1:  # (a teacher trained again, in place or elsewhere, between two methods' experiments)
            sources = "; ".join(f"{METHOD_LABELS[e.method]} from {e.teacher_file}"
                                + (f" (SHA-256 {e.teacher_sha256[:12]})" if e.teacher_sha256 else "")
                                for group in teachers for e in group)
            shown = f"that of {teacher_result.path}" if teacher_result else "not shown"
            warn(f"note: the cells of {what} distilled from different teacher checkpoints ({sources}): they compare "
                 f"students of different teachers; its 'teacher top-1' is {shown}")
        row = Row(dataset, arch, size, teacher, teacher_size, teacher_result, teacher_run, cells)
        if (dataset, arch, size) in single:
            row.cells["student"] = single[(dataset, arch, size)]
            used.add((dataset, arch, size))
        rows.append(row)
    for (dataset, arch, size), experiment in single.items():
        if (dataset, arch, size) not in used:
            rows.append(Row(dataset, arch, size, cells={"student": experiment}))
    rows.sort(key=lambda r: (r.dataset, r.teacher is None, _family(r.teacher or "", r.teacher_size),
                             -(r.teacher_size or 0), r.teacher or "", _family(r.arch, r.size), -r.size, r.arch))
    return rows


def _family(arch: str, size: int | None) -> str:
    """`arch` without the input size a ViT's name ends with, so that a size sweep sorts by size, not as text. (Not
    model_builder.parse_arch, which refuses a name this version cannot build; the summary still tables it.)"""
    return arch.removesuffix(f"_{size}")


def _cell(e: ExperimentResult | None) -> str:
    if e is None:
        return "–"
    r = e.results
    return (f"{r['best_acc_mean']:.2f} ± {r['best_acc_std']:.2f} / {r['last_acc_mean']:.2f} ± "
            f"{r['last_acc_std']:.2f} ({e.runs})")


def format_markdown(rows: list[Row]) -> str:
    """The table as markdown, with a line saying how to read a cell."""
    headers = ["dataset", "teacher", "teacher top-1", "student", *(METHOD_LABELS[m] for m in METHOD_COLUMNS)]
    table = []
    for r in rows:
        teacher = f"{r.teacher}@{r.teacher_size}" if r.teacher else "–"
        teacher_acc = "–" if r.teacher_acc is None else f"{r.teacher_acc:.2f}"
        cells = (_cell(r.cells.get(m)) for m in METHOD_COLUMNS)
        table.append([r.dataset, teacher, teacher_acc, f"{r.arch}@{r.size}", *cells])
    return (markdown_table(headers, table)
            + "\nEach cell: best test top-1 mean ± std / last-epoch test top-1 mean ± std (number of runs), in %. "
              "'baseline' is the student trained alone at its size (the single-network experiment). 'teacher top-1': "
              "the best test top-1 of the teacher checkpoint the cells distilled from (its run's, when it is one run "
              "of a multi-run experiment; else its experiment's mean).\n")


def _csv_rows(rows: list[Row], root: str, flops: dict) -> tuple[list[str], list[list[Any]]]:
    headers = ["dataset", "teacher_arch", "teacher_size", "teacher_best_acc", "student_arch", "student_size",
               "student_flops", "student_input_pixels", "student_input_bytes"]
    for m in METHOD_COLUMNS:
        headers += [f"{m}_best_mean", f"{m}_best_std", f"{m}_last_mean", f"{m}_last_std", f"{m}_runs",
                    f"{m}_experiment"]
    lines = []
    for r in rows:
        pixels, nbytes = input_cost(r.size)
        line: list[Any] = [r.dataset, r.teacher or "", r.teacher_size or "",
                           "" if r.teacher_acc is None else r.teacher_acc,
                           r.arch, r.size, flops.get((r.arch, r.size, r.num_classes), ""), pixels, nbytes]
        for m in METHOD_COLUMNS:
            e = r.cells.get(m)
            if e is None:
                line += [""] * 6
            else:
                res = e.results
                line += [res["best_acc_mean"], res["best_acc_std"], res["last_acc_mean"], res["last_acc_std"],
                         e.runs, os.path.relpath(e.path, root)]
        lines.append(line)
    return headers, lines


def plot_accuracy_vs_cost(rows: list[Row], flops: dict, path: str, x_axis: str) -> None:
    """Best top-1 (mean ± std) of every cell against the student's FLOPs or input pixels, one panel per dataset."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = sorted({r.dataset for r in rows})
    fig = Figure(figsize=(6.5 * len(datasets), 5))
    FigureCanvasAgg(fig)
    markers = dict(zip(METHOD_COLUMNS, itertools.cycle("osD^v<>PXh*")))
    colors = {m: f"C{i}" for i, m in enumerate(METHOD_COLUMNS)}  # the same colour for a method in every panel
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        named = set()
        for method in METHOD_COLUMNS:
            xs, ys, errs = [], [], []
            for r in (r for r in rows if r.dataset == dataset and method in r.cells):
                x = flops.get((r.arch, r.size, r.num_classes)) if x_axis == "flops" else input_cost(r.size)[0]
                if x is None:
                    continue
                res = r.cells[method].results
                xs.append(x / 1e9 if x_axis == "flops" else x)
                ys.append(res["best_acc_mean"])
                errs.append(res["best_acc_std"])
                if (r.arch, r.size) not in named:  # name each student once per panel
                    named.add((r.arch, r.size))
                    ax.annotate(f"{r.arch}@{r.size}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, -10),
                                fontsize=7)
            if xs:
                ax.errorbar(xs, ys, yerr=errs, fmt=markers[method], color=colors[method], capsize=3,
                            label=METHOD_LABELS[method])
        ax.set_xscale("log")
        ax.set_xlabel("student GFLOPs (multiply-add = 2)" if x_axis == "flops" else "student input pixels")
        ax.set_ylabel("best test top-1 (%)")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_output(path, lambda f: fig.savefig(f, format="png", dpi=120))


def write_summary(rows: list[Row], root: str, out_dir: str) -> list[str]:
    """Write summary.md, summary.csv, acc_vs_flops.png and acc_vs_pixels.png; returns their paths."""
    flops = {}
    for r in rows:
        key = (r.arch, r.size, r.num_classes)
        if key not in flops:
            try:
                flops[key] = flops_of(*key)
            except UserError as err:  # an architecture this version cannot build: no FLOPs, still a row
                print(f"note: no FLOPs for {r.arch}@{r.size} ({err})", file=sys.stderr)
    paths = [os.path.join(out_dir, name) for name in
             ("summary.md", "summary.csv", "acc_vs_flops.png", "acc_vs_pixels.png")]
    write_text(paths[0], format_markdown(rows))
    write_csv(paths[1], *_csv_rows(rows, root, flops))
    plot_accuracy_vs_cost(rows, flops, paths[2], "flops")
    plot_accuracy_vs_cost(rows, flops, paths[3], "pixels")
    return paths


def summarize(root: str, out_dir: str) -> list[Row]:
    """Find every experiment under `root`, print the table, write it and the plots into `out_dir`."""
    experiments = find_experiments(root)
    if not experiments:
        raise UserError(f"no experiment (a folder with results.json and config.yaml) under {root}")
    rows = build_rows(experiments)
    paths = write_summary(rows, root, out_dir)
    print(format_markdown(rows))
    print(f"{len(experiments)} experiment{'s' * (len(experiments) != 1)}, {len(rows)} row{'s' * (len(rows) != 1)}; "
          f"wrote {', '.join(paths)}")
    return rows
