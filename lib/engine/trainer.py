"""The one trainer: train_epoch, test_epoch, train_run, and run_experiment (a loop over seeded runs).

Every script (teacher, student baseline, KD family, ISRD) calls run_experiment with a method name; the
method only changes which Distiller is built. Each run saves a resumable state every epoch, so re-running
the same command after a kill continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from lib.config import small_crop_size
from lib.datasets import BatchPreparer, build_dataset
from lib.datasets.device import DeviceCropLoader, check_cache_fits
from lib.datasets.sampler import EpochBatchSampler, EpochSampler
from lib.distillers import Distiller, build_distiller, check_archs, method_archs
from lib.distillers.base import StepFn, StepOutput, check_step_output
from lib.utils.errors import (
    FRESH_START_INTERRUPTED_MESSAGE,
    TERMINATED_EXIT,
    UserError,
    first_line,
    interrupts_held,
    make_folder,
    raise_terminated,
    signal_safe_iter,
)
from lib.utils.files import run_folders
from lib.utils.log import WarnOnce, add_log_file, get_logger, held_warnings, log_stop
from lib.utils.processes import (
    LOADER_START_METHOD,
    STOP_SIGNALS,
    exit_with_parent,
    reap_loader_workers_at_exit,
    return_freed_memory,
    signals_ignored,
    start_quiet_resource_tracker,
    usable_cpus,
)

from .checkpoint import (
    ExperimentLock,
    atomic_write,
    load_results,
    load_run_result,
    read_saved,
    remove_temporaries,
    rng_state,
    save_checkpoint,
    save_json,
    set_rng_state,
)
from .distributed import (
    DistInfo,
    dist_info,
    init_distributed,
    parallel_slots,
    parent_died,
    run_threads,
    stop_when_parent_dies,
    sum_over_ranks,
)
from .resume import (
    STARTED_CONFIG,
    check_saved_config,
    check_saved_data,
    check_saved_inputs,
    checkpoint_fingerprints,
    data_fingerprint,
    move_aside,
    runs_elsewhere,
    stale_attempt,
)
from .setup import (
    configure_backends,
    device_names,
    environment_lines,
    experiment_dir,
    seed_everything,
    select_device,
    slot_devices,
    use_device,
)

if TYPE_CHECKING:  # imported where a run starts: tensorboard takes a second to load
    from torch.utils.tensorboard import SummaryWriter

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SINGLE_PROCESS = DistInfo()


@dataclass
class Experiment:
    """What a run needs to know about its experiment."""

    cfg: CfgNode
    method: str
    exp_dir: str
    multi_run: bool  # runs live in ckpt/run<i>/ and log/run<i>/ (False: the teacher's ckpt/ and log/)
    train_set: Dataset
    test_set: Dataset
    dist: DistInfo = SINGLE_PROCESS

    def run_dir(self, kind: str, run: int) -> str:
        """ckpt/ or log/ folder of a run."""
        return os.path.join(self.exp_dir, kind, f"run{run}") if self.multi_run else os.path.join(self.exp_dir, kind)


# ---------------------------------------------------------------------------------------------------------------
# Data loading
# ---------------------------------------------------------------------------------------------------------------
def epoch_seed(run_seed: int, epoch: int) -> int:
    """The data-order seed of an epoch: a function of (run seed, epoch) only, so a resumed run sees the same data."""
    return run_seed * 1_000_003 + epoch


def build_loader(cfg: CfgNode, dataset: Dataset, is_train: bool, device: torch.device,
                 dist: DistInfo = SINGLE_PROCESS) -> DataLoader | DeviceCropLoader:
    """The loader of the training stream (is_train) or of the test split.

    Training: batches come from an EpochBatchSampler; call loader.batch_sampler.set_epochs(seeds) and iterate
    once for the whole run (train_epoch takes batches_per_epoch of them per epoch), so the workers never start
    cold at an epoch boundary. Every item's order and augmentation follow from its epoch's seed, and under DDP
    each rank reads its own shard; DATA.PIPELINE "device" trains from a DeviceCropLoader instead (no workers).
    Test: a plain sequential loader whose workers persist across epochs.
    The loader has its own RNG, so creating an iterator never draws from the global torch RNG (which dropout
    uses): a resumed run's RNG stream matches an uninterrupted one's.
    """
    workers = min(cfg.BASIC.NUM_WORKERS, usable_cpus())
    if workers > 0:
        reap_loader_workers_at_exit()
    sampler = EpochSampler(len(dataset), shuffle=is_train, rank=dist.rank if is_train else 0,
                           world_size=dist.world_size if is_train else 1)
    if is_train:
        batch_sampler = EpochBatchSampler(sampler, cfg.TRAIN.BATCH_SIZE)
        if cfg.DATA.PIPELINE == "device":
            return DeviceCropLoader(dataset, batch_sampler, cfg.DATA.CROP_SIZE, device)
        batching = {"batch_sampler": batch_sampler}
    else:
        batching = {"sampler": sampler, "batch_size": cfg.TEST.BATCH_SIZE, "drop_last": False}
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=functools.partial(exit_with_parent, os.getpid()),  # torch seeds random/numpy/torch per worker
        multiprocessing_context=LOADER_START_METHOD if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=workers > 0 and not is_train,  # a training stream lives for the whole run anyway
        prefetch_factor=4 if workers > 0 else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# One epoch
# ---------------------------------------------------------------------------------------------------------------
class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


class StepMonitor:
    """Collects each step's loss terms on the host and stops on NaN/inf, without stalling the GPU.

    On CUDA the terms are copied into pinned host memory asynchronously and read one step later (after the
    next step is queued), so the trainer never waits for the GPU inside an epoch; on the CPU they are read at
    once. The running sums serve the progress lines and the epoch means.
    """

    def __init__(self, device: torch.device, where: str):
        self.device = device
        self.where = where
        self.pending = None
        self.names: list[str] = []
        self.sums: list[float] = []
        self.seen = 0

    def push(self, losses: dict, batch_size: int, epoch: int, step: int) -> None:
        """Queue this step's terms and account for the previous step's."""
        values = torch.stack([v.detach().float() for v in losses.values()])
        if self.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))  # the copy's stream, whatever the current device
            self.flush()
            self.pending = (host, event, list(losses), batch_size, epoch, step)
        else:
            self.pending = (values, None, list(losses), batch_size, epoch, step)
            self.flush()

    def flush(self) -> None:
        """Account for whatever is pending; raise NonFiniteLoss if it is NaN or infinite."""
        if self.pending is None:
            return
        values, event, names, batch_size, epoch, step = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        values = values.tolist()
        if not all(math.isfinite(v) for v in values):
            terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values))
            raise NonFiniteLoss(f"the loss is not finite in {self.where}, epoch {epoch}, step {step} ({terms}); "
                                "the checkpoints of the epochs before it are kept. Lower SOLVER.START_LR or a loss "
                                "weight, or check the data, then re-run")
        if not self.sums:
            self.names, self.sums = names, [0.0] * len(values)
        self.sums = [total + v * batch_size for total, v in zip(self.sums, values)]
        self.seen += batch_size

    def means(self) -> dict[str, float]:
        """Mean of every term over the steps accounted for so far."""
        return {n: total / max(self.seen, 1) for n, total in zip(self.names, self.sums)}


def compile_step(cfg: CfgNode, step: StepFn | torch.nn.Module,
                 wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> StepFn:
    """The training step's forward, compiled (TRAIN.COMPILE_BACKEND, _MODE) when TRAIN.COMPILE is on, else as given.
    With `wrap` (DDP), `step` is a module: it is compiled in place and the step is wrap(step).

    torch.compile builds on the first call: a build that fails there (no C++ compiler on the CPU or Triton on a
    GPU, or a step the backend cannot handle) gets one line naming the cause and the way out, not the compiler's
    traceback.
    """
    if not cfg.TRAIN.COMPILE:
        return step if wrap is None else wrap(step)
    # Static shapes: an epoch's short last batch gets a graph of its own. With dynamo's automatic dynamic shapes it
    # got a dynamic-shape graph that, under mixed precision, went on serving the full batches too (slower kernels).
    options = {"backend": cfg.TRAIN.COMPILE_BACKEND, "mode": cfg.TRAIN.COMPILE_MODE, "dynamic": False}
    if wrap is None:
        compiled = torch.compile(step, **options)
    else:
        # The module is compiled in place and DDP calls it: compiling DDP itself broke the graph three times in DDP's
        # own forward and warned on every rank. Dynamo still splits the graph at DDP's gradient buckets either way.
        step.compile(**options)
        compiled = wrap(step)

    def compiled_step(*args):
        try:
            return compiled(*args)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            if isinstance(err.inner_exception, torch.cuda.OutOfMemoryError):  # (autotuning's trial runs)
                raise err.inner_exception from None  # cli_main's line: what to lower, not compiler advice
            raise UserError(compile_failure(cfg, err.inner_exception)) from None

    return compiled_step


def compile_failure(cfg: CfgNode, cause: BaseException) -> str:
    """The one line for a torch.compile build that failed with `cause`."""
    name, line = type(cause).__name__, first_line(cause)
    what = f"{name}: {line}" if line else name
    if name == "InvalidCxxCompiler" or "triton" in str(cause).lower():
        advice = "install what it names (a C++ compiler on the CPU, Triton on a GPU), or set TRAIN.COMPILE False"
    elif cfg.TRAIN.COMPILE_BACKEND == "inductor":
        advice = ("TRAIN.COMPILE_BACKEND aot_eager tells whether tracing the step or generating its code fails, "
                  "or set TRAIN.COMPILE False")
    else:
        advice = "tracing the step fails, before any code is generated; set TRAIN.COMPILE False"
    return (f"TRAIN.COMPILE True: torch.compile ({cfg.TRAIN.COMPILE_BACKEND}) could not build the training step "
            f"({what}); {advice}")


def autocast(cfg: CfgNode, device: torch.device) -> contextlib.AbstractContextManager:
    """The TRAIN.AMP autocast context on `device` (a no-op for "none")."""
    if cfg.TRAIN.AMP == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[cfg.TRAIN.AMP])


def optimizer_step(step_fn: StepFn, batch: dict[str, torch.Tensor], epoch: int, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, cfg: CfgNode, device: torch.device) -> StepOutput:
    """One training step on a prepared batch: forward under TRAIN.AMP's autocast, backward, optimiser and scaler.

    Returns the step's (student logits, loss terms). The benchmark's "model only" figure times this same function.
    """
    with autocast(cfg, device):
        logits, losses = check_step_output(step_fn(batch["image"], batch["image_large"], batch["target"], epoch))
        loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return logits, losses


def train_epoch(distiller: Distiller, batches: Iterator, steps: int, prep: BatchPreparer,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: CfgNode, device: torch.device,
                epoch: int, where: str, step_fn: StepFn | None = None) -> dict:
    """Train on the next `steps` batches of the stream `batches` (one epoch of the training loader).

    Returns the mean of every loss term, their sum ("loss") and the train top-1 (%), over every DDP rank's shard.
    """
    log = get_logger()
    distiller.train()
    distiller.set_epoch(epoch)
    step_fn = distiller.forward_train if step_fn is None else step_fn
    monitor = StepMonitor(device, where)
    correct, seen = torch.zeros((), device=device), 0
    use_bar = sys.stdout.isatty()
    iterator = itertools.islice(batches, steps)
    if use_bar:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=steps, desc=f"{where} epoch {epoch}", leave=False, dynamic_ncols=True)
    start = time.time()
    for step, batch in enumerate(iterator, 1):
        batch = prep(batch)
        logits, losses = optimizer_step(step_fn, batch, epoch, optimizer, scaler, cfg, device)
        n = batch["target"].shape[0]
        monitor.push(losses, n, epoch, step)
        correct += (logits.detach().argmax(1) == batch["target"]).sum()
        seen += n
        if not use_bar and (step % cfg.BASIC.DISP_FREQ == 0 or step == steps):
            mean = monitor.means()  # up to the previous step on CUDA: reading it never waits for the GPU
            terms = " ".join(f"{k} {v:.4f}" for k, v in mean.items())
            log.info(f"{where} epoch {epoch} [{step}/{steps}] loss {sum(mean.values()):.4f} ({terms}) "
                     f"lr {optimizer.param_groups[0]['lr']:.6g} {seen / (time.time() - start):.1f} img/s")
    monitor.flush()
    # Under DDP each rank trained on its own shard: the epoch's figures are over all of them (the progress lines
    # above are this rank's).
    *sums, seen, correct = sum_over_ranks([*monitor.sums, seen, correct.item()], device)
    stats = {name: total / max(seen, 1) for name, total in zip(monitor.names, sums)}
    stats["loss"] = sum(stats.values())
    stats["train_top1"] = 100.0 * correct / max(seen, 1)
    return stats


@torch.no_grad()
def test_epoch(distiller: Distiller, loader: DataLoader, prep: BatchPreparer, cfg: CfgNode,
               device: torch.device) -> dict:
    """Top-1 and top-5 accuracy (%) and the mean CE of the plain student on the test split."""
    distiller.eval()
    top1 = torch.zeros((), device=device)
    top5 = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    seen = 0
    for batch in signal_safe_iter(loader):
        batch = prep(batch)
        with autocast(cfg, device):
            logits = distiller.forward_test(batch["image"])
        target = batch["target"]
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices  # (B, k)
        hits = topk == target[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        loss += F.cross_entropy(logits.float(), target, reduction="sum")
        seen += target.shape[0]
    return {"test_top1": 100.0 * top1.item() / seen, "test_top5": 100.0 * top5.item() / seen,
            "test_loss": loss.item() / seen}


# ---------------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------------
def _state_dict(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def best_checkpoint(exp: Experiment, distiller: Distiller, epoch: int, best_acc: float) -> dict:
    """The model_best.pth dict: the plain student's state_dict (loads into build_model(arch, n, False))."""
    _, arch = method_archs(exp.cfg, exp.method)
    ckpt = {"epoch": epoch, "state_dict": _state_dict(distiller.student), "best_acc": best_acc, "arch": arch,
            "num_classes": exp.cfg.DATA.NUM_CLASSES, "input_size": small_crop_size(exp.cfg)}
    for name, module in distiller.extra_modules().items():
        ckpt[name] = _state_dict(module)  # e.g. the ISRD decoder, saved beside the student
    return ckpt


def place_for_training(cfg: CfgNode, distiller: Distiller, device: torch.device
                       ) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
    """Move the distiller to `device` (channels_last with TRAIN.CHANNELS_LAST); its SGD and grad scaler (fp16 only)."""
    distiller.to(device)
    if cfg.TRAIN.CHANNELS_LAST:
        distiller.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, distiller.get_learnable_parameters(), fused=device.type == "cuda")
    return optimizer, torch.amp.GradScaler(device.type, enabled=cfg.TRAIN.AMP == "fp16")


def build_optimizer(cfg: CfgNode, params: list[torch.nn.Parameter], fused: bool) -> torch.optim.SGD:
    """The SGD of SOLVER.*. `fused` (on CUDA): torch's fused kernel, one launch for every parameter, with which the
    fp16 grad scaler's inf check stays on the GPU (with another SGD, GradScaler.step reads it back to the CPU every
    step, waiting for the GPU)."""
    optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.START_LR, momentum=cfg.SOLVER.MUMENTUM,
                                weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=True if fused else None)
    if fused and cfg.SOLVER.MUMENTUM:
        # The fused kernel makes its momentum buffers with empty_like at its first step and leaves them unwritten
        # when the grad scaler skips that step (fp16 overflows at the initial scale): the next step would add
        # uninitialised memory. Buffers made at zero give the first step's buffer = gradient, as the unfused SGD.
        for group in optimizer.param_groups:
            for param in group["params"]:
                optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)
    return optimizer


# How an optimiser computes its step on this machine (fused kernel, foreach or per tensor): not a checkpoint's to say.
_IMPLEMENTATION_KEYS = ("fused", "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """optimizer.load_state_dict(saved), keeping the optimiser's own implementation choice: load_state_dict would
    take the saved one, and a fused optimiser (whose step the grad scaler lets unscale the gradients) given back a
    saved 'fused': False would step on scaled gradients; a CPU resume of a GPU run would ask for the fused kernel."""
    kept = [{key: group[key] for key in _IMPLEMENTATION_KEYS if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, own in zip(optimizer.param_groups, kept):
        group.update(own)


def format_duration(seconds: float) -> str:
    """A duration for a log line: 45s, 12m, 3h05m, 2d04h (rounded to its last unit)."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(round(seconds / 3600), 24)
    return f"{days}d{hours:02d}h"


def _resume_fix(run: int) -> str:
    return (f"delete it to train run {run} again from its first epoch, or add BASIC.FRESH_START True to start the "
            "whole experiment over")


def _check_saved_runs(exp: Experiment, num_runs: int, pending: list[int]) -> tuple[dict[int, dict], set[int]]:
    """Read the finished runs' result.json and check that the pending runs' last.pth can be read, before anything
    is written: a damaged file is one line naming it, and so is a saved run of another DDP process count when this
    command trains. A saved run whose model_best.pth is missing or damaged, or whose last.pth was deleted, gets a
    warning. Returns the finished runs' rows, and the CPU thread counts the saved runs recorded."""
    done, threads = {}, set()
    for run in range(num_runs):
        ckpt_dir = exp.run_dir("ckpt", run)
        last = os.path.join(ckpt_dir, "last.pth")
        saved = None
        if run in pending:
            if os.path.isfile(last):
                saved = read_saved(last, _map_saved, _resume_fix(run))
                _check_world_size(exp, run, saved, last)
        else:
            saved = done[run] = read_saved(os.path.join(ckpt_dir, "result.json"), load_run_result,
                                           f"delete it and re-run: run {run} is summed up again from its last.pth")
            if pending:
                _check_world_size(exp, run, saved, os.path.join(ckpt_dir, "result.json"))
        if saved is not None and type(saved.get("cpu_threads")) is int and saved["cpu_threads"] > 0:
            threads.add(saved["cpu_threads"])
        best = os.path.join(ckpt_dir, "model_best.pth")
        if run in pending and not os.path.isfile(last):
            # A model_best.pth of a later epoch than the first: a last.pth was written (every epoch), then deleted.
            # (A kill between the two writes of epoch 1 leaves model_best.pth alone, and nothing to say.)
            epoch = _saved_epoch(best)
            if epoch > 1:
                get_logger().warning(f"warning: {last} is missing, though run {run} saved epoch {epoch} (its "
                                     f"model_best.pth): run {run} trains again from its first epoch")
        else:
            later = ("it is written again only if a later epoch scores higher" if run in pending
                     else "it cannot be made again")
            fix = f"{later}; delete {ckpt_dir} to train run {run} again"
            if not os.path.isfile(best):
                get_logger().warning(f"warning: {best} (run {run}'s best epoch so far) is missing; {fix}")
            else:  # (what distillation and tools/eval.py load later, long after the run)
                try:
                    read_saved(best, _map_saved, fix)
                except UserError as err:
                    get_logger().warning(f"warning: {err}")
    return done, threads


def _saved_epoch(path: str) -> int:
    """The epoch a run's model_best.pth holds; 0 where there is none or it cannot be read."""
    try:
        epoch = _map_saved(path)["epoch"]
    except Exception:  # missing, damaged: nothing to tell from it
        return 0
    return epoch if type(epoch) is int else 0


def _map_saved(path: str) -> dict:
    """A run's last.pth or model_best.pth, mapped rather than read (checks the archive, costs nothing for a large
    model); ValueError when it holds no saved state."""
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError(f"it holds a {type(state).__name__}, not a run's saved state")
    return state


def _check_world_size(exp: Experiment, run: int, saved: dict, path: str) -> None:
    """Refuse to train on beside (or into) a run that another number of DDP processes trained: TRAIN.BATCH_SIZE is
    per process, so the run, or the experiment's mean and std, would mix two batch sizes."""
    then, now = saved.get("world_size"), exp.dist.world_size
    if type(then) is not int or then == now:  # (a run saved before the count was recorded: not known)
        return
    batch = exp.cfg.TRAIN.BATCH_SIZE

    def processes(n: int) -> str:
        return f"{n} DDP processes" if n > 1 else "one process"

    how = (f"re-run it under torchrun with {then} processes in all (--nproc_per_node {then} on one node)" if then > 1
           else "re-run it with python, not torchrun,")
    raise UserError(f"run {run} of {exp.exp_dir} was trained by {processes(then)} ({path} says so; {batch * then} "
                    f"images a step: TRAIN.BATCH_SIZE {batch} per process), and this command trains with "
                    f"{processes(now)} ({batch * now} a step); {how} to go on with the same batch, or add "
                    "BASIC.FRESH_START True to start over")


def _cpu_threads(cfg: CfgNode, device: torch.device, num_runs: int, saved: set[int], ddp: bool) -> int:
    """The CPU threads of each run this command trains (0: torch's default): those the experiment's saved runs
    trained with, when they recorded one count and the runs train on the CPU; else run_threads' (torch's default
    under DDP)."""
    threads = 0 if ddp else run_threads(cfg, device, num_runs)
    now = threads or torch.get_num_threads()
    if device.type != "cpu" or len(saved) != 1 or saved == {now}:
        return threads
    (then,) = saved
    # A CPU kernel's rounding depends on its thread count, which OMP_NUM_THREADS, the CPUs a scheduler gives the job
    # and BASIC.PARALLEL_RUNS set: a run resumed with another would not end as an uninterrupted one.
    get_logger().warning(f"warning: the saved runs of this experiment trained with {then} CPU threads each, and this "
                         f"command would use {now}; it uses {then}, so that the resumed runs' numbers are those of "
                         "an uninterrupted experiment")
    return then


def _load_last(last_path: str, run: int, distiller: Distiller, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
               device: torch.device) -> dict:
    """Restore a run from its last.pth: the student, the extra modules, the optimiser, scheduler and scaler, and the
    random number generators; returns the saved state for its epoch, best and history."""
    fix = _resume_fix(run)
    state = read_saved(last_path, lambda p: torch.load(p, map_location="cpu", weights_only=False), fix)
    try:
        distiller.student.load_state_dict(state["student"])
        for name, module in distiller.extra_modules().items():
            module.load_state_dict(state["extra"][name])
    except (KeyError, RuntimeError) as err:  # e.g. written before a module changed shape (the ISRD decoder)
        detail = str(err) if len(str(err)) <= 300 else str(err)[:297] + "..."  # cli_main joins its lines
        raise UserError(f"{last_path} does not fit the model of this config ({type(err).__name__}: {detail}); "
                        f"it was written by another version of the code; {fix}") from None
    load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], device)
    return state


def train_run(exp: Experiment, run: int, device: torch.device, distiller: Distiller | None = None) -> dict:
    """Train (or resume) run `run` of the experiment to the end; returns its result row."""
    from torch.utils.tensorboard import SummaryWriter

    cfg, log = exp.cfg, get_logger()
    seed = cfg.BASIC.SEED + run
    where = f"run {run}"  # a single-run experiment (the teacher) is run 0 too: seed BASIC.SEED + 0
    ckpt_dir, log_dir = exp.run_dir("ckpt", run), exp.run_dir("log", run)
    last_path = os.path.join(ckpt_dir, "last.pth")
    if distiller is None:
        seed_everything(seed)
        distiller = build_distiller(cfg, exp.method)
    optimizer, scaler = place_for_training(cfg, distiller, device)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.SOLVER.LR_STEPS),
                                                     gamma=cfg.SOLVER.LR_DECAY_FACTOR)
    # The module called for each training step: the distiller, in its DDP wrapper under torchrun, compiled or not.
    ddp = (functools.partial(DistributedDataParallel, device_ids=[device.index] if device.type == "cuda" else None)
           if exp.dist.enabled else None)
    step_fn = compile_step(cfg, distiller, ddp)
    main = exp.dist.is_main
    cpu_threads = torch.get_num_threads() if device.type == "cpu" else None  # (a GPU run's numbers do not depend on it)

    start_epoch, best_acc, best_epoch, history = 0, 0.0, 0, []
    if os.path.isfile(last_path):
        state = _load_last(last_path, run, distiller, optimizer, scheduler, scaler, device)
        start_epoch, best_acc, best_epoch, history = (state["epoch"], state["best_acc"], state["best_epoch"],
                                                      state["history"])
        log.info(f"{where}: resuming after epoch {start_epoch} from {last_path}")
    else:
        seed_everything(seed)  # the same RNG state at epoch 1 whether or not the distiller was prebuilt

    if main:
        _require_exp_dir(exp, f"{where} started")
    make_folder(ckpt_dir)
    # Tensorboard drops the events from start_epoch + 1 on that an earlier attempt wrote, from epoch 1 too: an
    # attempt killed before its first last.pth (or whose last.pth was deleted) has logged epochs all the same.
    with interrupts_held():  # (tensorboard's writer queue takes a lock)
        writer = SummaryWriter(log_dir, purge_step=start_epoch + 1) if main else None
    prep = BatchPreparer(cfg, device, channels_last=cfg.TRAIN.CHANNELS_LAST)
    test_loader = build_loader(cfg, exp.test_set, False, device)
    train_loader = build_loader(cfg, exp.train_set, True, device, exp.dist)
    epochs = range(start_epoch + 1, cfg.SOLVER.NUM_EPOCHS + 1)
    train_loader.batch_sampler.set_epochs([epoch_seed(seed, epoch) for epoch in epochs])
    steps = train_loader.batch_sampler.batches_per_epoch
    batches = signal_safe_iter(train_loader if epochs else ())  # one stream for all the epochs left
    trained_s = 0.0  # time of the epochs this process has trained: their mean estimates the rest
    try:
        for epoch in epochs:
            lr = optimizer.param_groups[0]["lr"]
            tic = time.time()
            stats = train_epoch(distiller, batches, steps, prep, optimizer, scaler, cfg, device, epoch, where,
                                step_fn)
            scheduler.step()
            stats.update(test_epoch(distiller, test_loader, prep, cfg, device))
            if not math.isfinite(stats["test_loss"]):
                # NaN logits rank as the largest: the epoch's accuracy would be noise, and might be kept as the best.
                raise NonFiniteLoss(f"the test loss is not finite in {where}, epoch {epoch} (test_loss="
                                    f"{stats['test_loss']:.4g}; the student's test logits hold NaN or inf); the "
                                    "checkpoints of the epochs before it are kept. Lower SOLVER.START_LR or a loss "
                                    "weight, or train without TRAIN.AMP fp16, then re-run")
            stats.update(epoch=epoch, lr=lr, time_s=round(time.time() - tic, 3))
            # The first epoch is the best so far whatever it scores: a run at 0% still gets its model_best.pth.
            improved = best_epoch == 0 or stats["test_top1"] > best_acc
            if improved:
                best_acc, best_epoch = stats["test_top1"], epoch
            stats.update(best_acc=best_acc, best_epoch=best_epoch)
            history.append(stats)
            if not main:
                continue
            _require_exp_dir(exp, f"{where} trained (epoch {epoch})")
            if improved:
                save_checkpoint(best_checkpoint(exp, distiller, epoch, best_acc),
                                os.path.join(ckpt_dir, "model_best.pth"))
            # The logs before last.pth: a kill between the two redoes this epoch, which rewrites stats.jsonl from the
            # history and purges tensorboard's later steps; the other order would lose the epoch's logs for good.
            with interrupts_held():  # (tensorboard's writer queue takes a lock)
                _write_epoch_logs(writer, log_dir, history, stats)
            save_checkpoint({
                "epoch": epoch, "student": _state_dict(distiller.student),
                "extra": {k: _state_dict(m) for k, m in distiller.extra_modules().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "best_acc": best_acc, "best_epoch": best_epoch,
                "history": history, "rng": rng_state(device), "seed": seed, "world_size": exp.dist.world_size,
                "cpu_threads": cpu_threads,
            }, last_path)  # (what _load_last restores)
            trained_s += stats["time_s"]
            left = cfg.SOLVER.NUM_EPOCHS - epoch
            eta = f", {where} ends in ~{format_duration(trained_s / (epoch - start_epoch) * left)}" if left else ""
            log.info(f"{where} epoch {epoch}/{cfg.SOLVER.NUM_EPOCHS}: loss {stats['loss']:.4f} "
                     f"train top1 {stats['train_top1']:.2f} test top1 {stats['test_top1']:.2f} "
                     f"top5 {stats['test_top5']:.2f} best {best_acc:.2f} (epoch {best_epoch}) "
                     f"[{stats['time_s']:.1f}s{eta}]")
    finally:
        with interrupts_held():  # Python would swallow a Ctrl-C raised inside the loaders' __del__
            batches.close()  # stops the loader workers at once, also when the run fails (its traceback keeps the
            del batches, train_loader, test_loader  # stream referenced: deleting it alone would not)
            if writer is not None:
                writer.close()
    last_acc = history[-1]["test_top1"] if history else 0.0
    result = {"run": run, "seed": seed, "best_acc": best_acc, "best_epoch": best_epoch, "last_acc": last_acc,
              "world_size": exp.dist.world_size,  # (DDP processes: _check_world_size)
              "cpu_threads": cpu_threads}  # (what a resumed experiment goes on with: _cpu_threads)
    if main:
        _require_exp_dir(exp, f"{where} finished")
        save_json(result, os.path.join(ckpt_dir, "result.json"))
    return result


def _require_exp_dir(exp: Experiment, when: str) -> None:
    """Stop in one line if the experiment folder is gone: cleaned away by hand from another shell, it would be made
    again by the next write, without its config.yaml."""
    if not os.path.isdir(exp.exp_dir):
        raise UserError(f"the experiment folder {exp.exp_dir} was deleted or moved while {when}; nothing more is "
                        "written. Re-run the same command to train again (it resumes if the folder is moved back)")


def _write_epoch_logs(writer: SummaryWriter, log_dir: str, history: list[dict], stats: dict) -> None:
    """Tensorboard scalars of this epoch, and the whole history as JSON lines (rewritten atomically)."""
    epoch = stats["epoch"]
    for key, value in stats.items():
        if key.startswith("loss"):
            writer.add_scalar(f"train/{key}", value, epoch)
    writer.add_scalar("train/top1", stats["train_top1"], epoch)
    writer.add_scalar("test/top1", stats["test_top1"], epoch)
    writer.add_scalar("test/top5", stats["test_top5"], epoch)
    writer.add_scalar("test/loss", stats["test_loss"], epoch)
    writer.add_scalar("lr", stats["lr"], epoch)
    writer.flush()
    lines = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(os.path.join(log_dir, "stats.jsonl"), lambda f: f.write(lines.encode()))


# ---------------------------------------------------------------------------------------------------------------
# An experiment: several seeded runs
# ---------------------------------------------------------------------------------------------------------------
def summarize_runs(rows: list[dict]) -> dict:
    """results.json: the runs, and mean / std (sample std, 0 for one run) of the best and last accuracy."""
    out: dict = {"runs": rows}
    for key in ("best_acc", "last_acc"):
        values = [r[key] for r in rows]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[f"{key}_mean"], out[f"{key}_std"] = mean, std
    return out


def format_table(results: dict) -> str:
    """The results as a small text table."""
    lines = ["run  seed  best_acc  best_epoch  last_acc"]
    for r in results["runs"]:
        lines.append(f"{r['run']:>3}  {r['seed']:>4}  {r['best_acc']:>8.2f}  {r['best_epoch']:>10}  "
                     f"{r['last_acc']:>8.2f}")
    lines.append(f"best_acc {results['best_acc_mean']:.2f} ± {results['best_acc_std']:.2f}   "
                 f"last_acc {results['last_acc_mean']:.2f} ± {results['last_acc_std']:.2f}   "
                 f"({len(results['runs'])} run{'s' if len(results['runs']) > 1 else ''})")
    return "\n".join(lines)


def run_experiment(cfg: CfgNode, method: str, num_runs: int, multi_run: bool = True) -> dict:
    """Train `num_runs` seeded runs of `method` (resuming what an earlier attempt left) and write results.json.

    Args:
        cfg: the frozen config.
        method: "single" (MODEL.ARCH alone) or a distillation method (kd, at, sp, ickd, dkd, isrd; tas: stage 2 of TAS).
        num_runs: number of independent runs; run i uses seed BASIC.SEED + i.
        multi_run: keep runs in ckpt/run<i>/ and log/run<i>/ (False: one run in ckpt/ and log/, the teacher's).
    Returns:
        The results.json content.
    """
    check_archs(cfg, method)
    if method == "isrd" and cfg.MODEL.KDTYPE != "kd":  # read by nothing here, yet it would make "another config"
        raise UserError(f"MODEL.KDTYPE is {cfg.MODEL.KDTYPE!r}, but ISRD distils logits with KD and reads no "
                        f"MODEL.KDTYPE; leave it 'kd', or train {cfg.MODEL.KDTYPE} with tools_1_ts/train_kd_5runs.py")
    lock = ExperimentLock()
    try:
        return _run_experiment(cfg, method, num_runs, multi_run, lock)
    finally:
        lock.release()


def _run_experiment(cfg: CfgNode, method: str, num_runs: int, multi_run: bool, lock: ExperimentLock) -> dict:
    log = get_logger()
    if not dist_info().enabled and (cfg.BASIC.PARALLEL_RUNS > 1 or
                                    (cfg.BASIC.PARALLEL_RUNS == 0 and len(cfg.BASIC.GPU_ID) > 1)):
        # Before anything else can start the tracker: a progress bar's lock does where the default start method
        # is not fork (Python 3.14's forkserver, macOS's spawn).
        start_quiet_resource_tracker()
    exp_dir = experiment_dir(cfg, method, num_runs)
    if dist_info().is_main and os.path.isdir(exp_dir):
        lock.take(exp_dir)  # before anything is read or moved: another process may be training into it
    results_path = os.path.join(exp_dir, "results.json")
    exists = os.path.isfile(os.path.join(exp_dir, "config.yaml"))
    if not exists and (os.path.isdir(os.path.join(exp_dir, "ckpt")) or os.path.isfile(results_path)):
        # Runs saved, but nothing to check this command's config against: resuming them could mix two configs.
        if not cfg.BASIC.FRESH_START:
            raise UserError(f"{exp_dir} holds saved runs but no config.yaml to check this command's config "
                            "against; restore its config.yaml to resume, or add BASIC.FRESH_START True to start over")
        exists = True  # an earlier attempt: moved aside below
    checking = exists and not cfg.BASIC.FRESH_START  # an earlier attempt, to resume or re-report
    if checking:
        _check_layout(exp_dir, multi_run)
    stale = checking and stale_attempt(exp_dir, lambda: check_saved_config(cfg, exp_dir),
                                        lambda: check_saved_inputs(cfg, method, exp_dir))
    if checking and not stale and os.path.isfile(results_path):
        results = read_saved(results_path, load_results,
                             "delete it and re-run: it is made again from the runs' result.json")
        if dist_info().is_main:  # (under torchrun every rank finds it finished)
            log.info(f"{exp_dir} is finished; its results:\n{format_table(results)}")
        return results

    # Everything that can be checked is checked before anything is written: data, models, checkpoints (the free
    # GPU memory for parallel runs' device caches excepted: each run process checks its own GPU's).
    configure_backends(cfg)
    info, device = init_distributed(cfg)
    if not info.is_main:
        log.setLevel("WARNING")
    # Warnings (the CPU fallback, a teacher trained at another size, ...) wait until everything is checked: a mistake
    # stays one line, and they go to train.log too.
    with held_warnings() as warnings:
        device = device or select_device(cfg)
        train_set, test_set = build_dataset(cfg, is_train=True), build_dataset(cfg, is_train=False)
        exp = Experiment(cfg, method, exp_dir, multi_run, train_set, test_set, info)
        stale = stale or (checking and stale_attempt(
            exp_dir, lambda: check_saved_data(cfg, exp_dir, train_set, test_set)))
        fresh = exists and (cfg.BASIC.FRESH_START or stale)
        pending = [r for r in range(num_runs)
                   if fresh or not os.path.isfile(os.path.join(exp.run_dir("ckpt", r), "result.json"))]
        done, saved_threads = ({}, set()) if fresh else _check_saved_runs(exp, num_runs, pending)
        slots = 1 if info.enabled else parallel_slots(cfg, device, len(pending))
        threads = _cpu_threads(cfg, device, num_runs, saved_threads, info.enabled) if pending else 0
        if info.enabled and cfg.BASIC.PARALLEL_RUNS > 1:
            log.warning(f"warning: BASIC.PARALLEL_RUNS {cfg.BASIC.PARALLEL_RUNS} is ignored under torchrun: the "
                        f"{info.world_size} DDP processes train each run together, one run after another")
        # Only a process that trains takes its device (on CUDA 12 that makes a context there): run processes take
        # their own, and this one stays off the GPUs (a GPU in exclusive-process mode takes one process only).
        run_devices = slot_devices(cfg, device, slots)
        first = None
        if pending:
            if slots == 1:
                use_device(device)
            if cfg.DATA.PIPELINE == "device":  # run processes check the free memory of their GPUs as they start
                for run_device in dict.fromkeys(run_devices):
                    check_cache_fits(train_set, run_device, free=slots == 1)
            seed_everything(cfg.BASIC.SEED + pending[0])
            first = build_distiller(cfg, method)
        if info.is_main:
            _claim_folder(exp, lock, exists, fresh, stale)
        _barrier(info)
    handler = add_log_file(os.path.join(exp_dir, "train.log")) if info.is_main else None
    once = WarnOnce()  # each run builds its networks again: what the first build warned of is said once
    log.addFilter(once)
    try:
        for line in warnings if info.is_main else ():  # (every rank of a DDP job checked the same config)
            log.warning(line)
        for line in environment_lines(run_devices):
            log.info(line)
        devices = ", ".join(device_names(run_devices))
        log.info(f"experiment: {exp_dir} ({method}, {num_runs} run(s), device {devices}, "
                 f"{len(train_set)} train / {len(test_set)} test images"
                 + (f", {info.world_size} DDP processes" if info.enabled else "")
                 + (f", {slots} runs at a time" if slots > 1 else "") + ")")
        for run, row in done.items():
            log.info(f"run {run} already finished: best {row['best_acc']:.2f}")
        if info.is_main and multi_run and pending == list(range(num_runs)):
            for folder, runs in runs_elsewhere(cfg, exp_dir, num_runs):
                log.info(f"note: {folder} holds finished runs {', '.join(map(str, runs))} of this same config (run i "
                         "has seed BASIC.SEED + i in both), which this experiment trains again; to reuse them instead, "
                         "stop it and copy their ckpt/run<i>/ and log/run<i>/ folders into its own, then re-run")
        if slots > 1:
            del first
            for split in (train_set, test_set):  # checked; each run process decodes its own
                split.release_images()
            return_freed_memory()
            done.update(_train_in_parallel(exp, pending, run_devices, threads, sorted(once.said)))
        else:
            default_threads = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                for run in pending:
                    done[run] = train_run(exp, run, device, first)
                    first = None  # run 0's networks (and their gradients) are freed before run 1 builds its own
            except UserError as err:
                # Met while training, by this process's own images or loss: under DDP maybe by this rank alone, so
                # each rank that meets it says it (rank 0 alone says the mistakes every rank meets).
                err.every_rank = info.enabled
                raise
            finally:
                torch.set_num_threads(default_threads)
        results = summarize_runs([done[run] for run in range(num_runs)])
        if info.is_main:
            save_json(results, results_path)
            log.info(f"results ({results_path}):\n{format_table(results)}")
        return results
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt) and cfg.BASIC.FRESH_START:
            err.message = FRESH_START_INTERRUPTED_MESSAGE  # the same command would move this attempt aside again
        if handler is not None:  # the log says how it ended: tools/summarize.py tells a failed run from a running one
            log_stop(handler, err)
        raise
    finally:
        log.removeFilter(once)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _check_layout(exp_dir: str, multi_run: bool) -> None:
    """Refuse an experiment folder whose run is laid out for the other kind of script: a one-run script (the
    teacher's: ckpt/) and a multi-run one given BASIC.NUM_RUNS 1 (ckpt/run0/) name the same experiment alike."""
    ckpt = os.path.join(exp_dir, "ckpt")

    def saved_in(folder: str) -> bool:
        return any(os.path.isfile(os.path.join(folder, name)) for name in ("last.pth", "result.json"))

    in_runs = any(saved_in(path) for path, _ in run_folders(ckpt))
    in_ckpt = saved_in(ckpt)
    if not multi_run and in_runs and not in_ckpt:
        raise UserError(f"{exp_dir} holds a 1-run experiment of a multi-run script (its run in ckpt/run0/), the same "
                        "networks, sizes and seed as this one-run script trains, which would put its run in ckpt/ "
                        f"itself; where its checkpoint is wanted, give {os.path.join(ckpt, 'run0', 'model_best.pth')}, "
                        "or give this command its own BASIC.OUTPUT_ROOT")
    if multi_run and in_ckpt and not in_runs:
        raise UserError(f"{exp_dir} holds the run of a one-run script (a teacher's or a TAS assistant's: in ckpt/ "
                        "itself), the same networks, sizes and seed as this command's 1-run experiment, which would "
                        "put its run in ckpt/run0/; train 2 or more runs (BASIC.NUM_RUNS, another folder), or give "
                        "this command its own BASIC.OUTPUT_ROOT")


def _claim_folder(exp: Experiment, lock: ExperimentLock, exists: bool, fresh: bool, stale: bool) -> None:
    """The main process's bookkeeping once everything is checked: move an earlier attempt aside when starting over
    (`fresh`; `stale`: it saved no epoch under another config, teacher or dataset), make and lock the folder, and
    give a new experiment its config.yaml and inputs.json."""
    if fresh:
        why = ("an earlier attempt with another config, teacher or dataset, which saved no epoch," if stale
               else "BASIC.FRESH_START: the earlier attempt")
        get_logger().info(f"{why} was moved to {move_aside(exp.exp_dir)}")
        exists = False
    make_folder(exp.exp_dir)
    if lock.take(exp.exp_dir):  # a new folder (or the one made after moving the old aside)
        for path in remove_temporaries(exp.exp_dir):
            get_logger().info(f"removed {path}, a file that a killed write left half-done")
    if not exists:
        # BASIC.FRESH_START is what this command did, not a setting of the experiment: saved True, a later command
        # given this config.yaml (to resume a copy, say) moved the finished experiment aside and trained it again.
        saved = exp.cfg.clone()
        saved.defrost()
        saved.BASIC.FRESH_START = False
        # inputs.json first, with a copy of config.yaml to tell an edit of it by (check_saved_config); config.yaml,
        # whose presence makes the folder an experiment to resume, last, and whole (a full disk leaves none).
        text = saved.dump()
        save_json({**checkpoint_fingerprints(exp.cfg, exp.method, every_key=True),
                   **data_fingerprint(exp.train_set, exp.test_set), STARTED_CONFIG: text},
                  os.path.join(exp.exp_dir, "inputs.json"))
        atomic_write(os.path.join(exp.exp_dir, "config.yaml"), lambda f: f.write(text.encode()))


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def _train_in_parallel(exp: Experiment, pending: list[int], devices: Sequence[torch.device],
                       threads: int, said: Sequence[str] = ()) -> dict[int, dict]:
    """Train the pending runs in one process per entry of `devices` at once (`threads` CPU threads each on the CPU);
    the warnings `said` already are not said again by the run processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # Ctrl-C (and a closed terminal's SIGHUP, Slurm's SIGUSR1 ahead of a time limit) reaches every process of the
    # terminal's group or job. The run processes (and the loader workers they fork) start with them ignored; this
    # process answers them and stops them through SIGTERM, on which each unwinds like an interrupted run (loaders
    # shut down, the last finished epoch kept): one line, not a traceback each.
    with signals_ignored((signal.SIGINT, *STOP_SIGNALS)):
        slots = len(devices)
        pool = ProcessPoolExecutor(slots, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_stop_on_sigterm)
        jobs = [pool.submit(_parallel_worker, exp.cfg.dump(), exp.method, exp.exp_dir, exp.multi_run,
                            pending[slot::slots], str(device), threads, said) for slot, device in enumerate(devices)]
    results = {}
    try:
        for job in jobs:
            results.update(job.result())
    except BaseException as err:
        # Interrupted, or a run failed: stop the other runs now rather than wait for them to finish. (The
        # executor has no public way to signal running workers.)
        _stop_run_processes(list(pool._processes.values()))
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(err, BrokenProcessPool):  # a run process killed outright: the kernel's out-of-memory killer
            raise UserError(f"a run process of {exp.exp_dir} ended abruptly (killed outright: by the system's "
                            "out-of-memory killer, or kill -9?), and the other runs were stopped; their last saved "
                            "epochs are kept: re-run the same command to resume (with fewer BASIC.PARALLEL_RUNS if "
                            "memory ran out)") from None
        raise
    pool.shutdown()
    return results


# A run process that outlives the SIGTERM that stops it gets another this many seconds later: one that was unwinding
# its run went back to waiting for a task (a second SIGTERM, from its pool once another run process had exited, may
# have come while it unwound), where the next ends it at once. One still there after the last is killed.
_RESTOP_S = 5.0
_KILL_AFTER_S = 120.0


def _stop_run_processes(processes: Sequence) -> None:
    """SIGTERM the run processes of a ProcessPoolExecutor, again every _RESTOP_S until each has exited (killed
    after _KILL_AFTER_S), so that the pool's shutdown does not wait for ever on one that waits for a task."""
    start = last = time.monotonic()
    for process in processes:
        process.terminate()
    while alive := [process for process in processes if process.is_alive()]:
        now = time.monotonic()
        if now - start >= _KILL_AFTER_S:
            for process in alive:
                process.kill()
        elif now - last >= _RESTOP_S:
            for process in alive:
                process.terminate()
            last = now
        time.sleep(0.05)


def _stop_on_sigterm() -> None:
    """The initializer of a run process: SIGTERM (sent by _train_in_parallel, or by the process itself once its
    parent has died) ends it at once and silently while it waits for a task; _parallel_worker makes it interrupt a
    run as Ctrl-C would.

    A SIGTERM that comes while it runs (the runs stopped as this process starts: another run process killed) raises
    SystemExit here, which the pool takes for a failed initializer and logs in a traceback ("Exception in
    initializer:"): the process ends here instead, as the pool's loop would have ended it.
    """
    try:
        signal.signal(signal.SIGTERM, _exit_terminated)
        stop_when_parent_dies()
    except SystemExit as stop:
        import multiprocessing.util

        multiprocessing.util._exit_function()  # what a process of the pool runs as it ends (its finalizers)
        os._exit(stop.code)


def _exit_terminated(signum, frame) -> None:
    # SystemExit, not os._exit: the process's exit handlers run (multiprocessing's unlink the semaphores it made,
    # tqdm's lock among them; skipped, the resource tracker warned of "leaked semaphore objects" on the job's
    # stderr), and multiprocessing ends the process quietly with this status (the pool's loop, waiting for a task,
    # does not catch it; while the process still hands a result over, the pool's catch-all takes it and the process
    # waits again, which is why _stop_run_processes signals again).
    raise SystemExit(TERMINATED_EXIT)


def _parallel_worker(cfg_yaml: str, method: str, exp_dir: str, multi_run: bool, runs: list[int], device: str,
                     threads: int, said: Sequence[str] = ()) -> dict[int, dict]:
    """One process of _train_in_parallel: rebuild the data and train its runs on its device."""
    idle = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, raise_terminated)  # from here the run unwinds, its last saved epoch kept
    log, handler, once = get_logger(), None, WarnOnce(said)
    try:
        cfg = CfgNode.load_cfg(cfg_yaml)
        cfg.freeze()
        if threads:
            torch.set_num_threads(threads)
        configure_backends(cfg)
        handler = add_log_file(os.path.join(exp_dir, "train.log"))
        log.addFilter(once)
        exp = Experiment(cfg, method, exp_dir, multi_run, build_dataset(cfg, is_train=True),
                         build_dataset(cfg, is_train=False))
        target = torch.device(device)
        use_device(target)
        if cfg.DATA.PIPELINE == "device":  # its free memory (the main process, off the GPUs, read the whole memory)
            check_cache_fits(exp.train_set, target)
        return {run: train_run(exp, run, target) for run in runs}
    except KeyboardInterrupt:
        if parent_died():  # the run has unwound; nobody waits for the result, and the pool would idle on its queue
            os._exit(TERMINATED_EXIT)
        raise
    finally:
        signal.signal(signal.SIGTERM, idle)
        log.removeFilter(once)
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
