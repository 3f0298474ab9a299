"""Throughput benchmark of the training step: end to end, model only, teacher only, loader only.

Each figure is images per second after a warm-up. "model only" runs the full training step (forward, losses,
backward, SGD) on batches already on the device: the compute bound that the input pipeline should reach.
"end to end" is the trainer's own train_epoch over the real loader, in its steady state (a run iterates one
stream for all its epochs, so its workers start once; that start is reported as "stream_start_s"). All three input
pipelines (DATA.PIPELINE "tensor", the original's "pil", and "device") are measured in one call to be compared.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

import torch
from yacs.config import CfgNode

from lib.config import KDTYPES, pass_on_the_command_line, resolve_path
from lib.datasets import BatchPreparer, build_dataset
from lib.distillers import Distiller, build_distiller
from lib.models.model_builder import build_model
from lib.utils.errors import UserError, make_folder, signal_safe_iter
from lib.utils.log import get_logger, warnings_once
from lib.utils.processes import usable_cpus

from .checkpoint import atomic_write
from .setup import configure_backends, seed_everything, select_device, use_device
from .trainer import autocast, build_loader, compile_step, optimizer_step, place_for_training, train_epoch

# The methods --method names; "auto" reads the config (benchmark_method).
BENCHMARK_METHODS = ("auto", "single", *KDTYPES, "isrd")


def benchmark_method(cfg: CfgNode, method: str = "auto") -> str:
    """The method to measure: `method`, or for "auto" the one the config describes: single (no MODEL.ARCH_T),
    isrd (FSR.ETA > 0, as the ISRD configs set it), else MODEL.KDTYPE. A teacher file named but not there is said
    (a random-weight teacher stands in: _build)."""
    method = _method(cfg, method)
    if method != "single" and cfg.MODEL.MODELDICT_T and not os.path.isfile(resolve_path(cfg.MODEL.MODELDICT_T)):
        get_logger().info(f"note: MODEL.MODELDICT_T {cfg.MODEL.MODELDICT_T} is not there; a random-weight teacher "
                          "stands in, which runs at the same speed")
    return method


def _method(cfg: CfgNode, method: str) -> str:
    if method not in BENCHMARK_METHODS:
        raise UserError(f"--method must be one of {', '.join(BENCHMARK_METHODS)}, got {method!r}")
    if method != "auto":
        if method != "single" and not cfg.MODEL.ARCH_T:
            raise UserError(f"--method {method} distils from a teacher, but MODEL.ARCH_T is empty; name it")
        return method
    if not cfg.MODEL.ARCH_T:
        return "single"
    if cfg.FSR.ETA > 0:
        if cfg.MODEL.KDTYPE != "kd":
            get_logger().info(f"note: FSR.ETA > 0, so ISRD is measured; MODEL.KDTYPE {cfg.MODEL.KDTYPE} is not "
                              f"(--method {cfg.MODEL.KDTYPE} measures it)")
        return "isrd"
    return cfg.MODEL.KDTYPE


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or on the CPU the main process's peak RSS, since the last _reset_peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:  # Linux: VmHWM, the peak RSS that _reset_peak restarts
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: the process's peak since it began


def _reset_peak(device: torch.device) -> None:
    """Restart the peak that _peak_memory_mb reads (on the CPU, Linux's VmHWM; elsewhere it cannot be restarted)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _with_pipeline(cfg: CfgNode, pipeline: str) -> CfgNode:
    out = cfg.clone()
    out.defrost()
    out.DATA.PIPELINE = pipeline
    out.BASIC.DISP_FREQ = 10**9  # no progress lines inside timed loops
    out.freeze()
    return pass_on_the_command_line(cfg, out)


def _build(cfg: CfgNode, method: str) -> Distiller:
    """The distiller; a random-weight teacher stands in when MODEL.MODELDICT_T is not there (speed only)."""
    teacher = None
    has_teacher_file = bool(cfg.MODEL.MODELDICT_T) and os.path.isfile(resolve_path(cfg.MODEL.MODELDICT_T))
    if method != "single" and not has_teacher_file:
        teacher = build_model(cfg.MODEL.ARCH_T, cfg.DATA.NUM_CLASSES, False)
    return build_distiller(cfg, method, teacher=teacher)


def _time_loop(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` calls of fn(i), after `warmup` untimed calls."""
    for i in range(warmup):
        fn(i)
    _sync(device)
    tic = time.perf_counter()
    for i in range(steps):
        fn(warmup + i)
    _sync(device)
    return time.perf_counter() - tic


def _profile(fn, device: torch.device, trace_path: str) -> str:
    """Run fn() under torch.profiler (CPU, and CUDA on a GPU); write a Chrome trace; return the top host ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    prof.export_chrome_trace(trace_path)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


def measure_pipeline(cfg: CfgNode, method: str, steps: int, warmup: int, repeats: int = 3,
                     profile_dir: str | None = None) -> dict:
    """All four figures (img/s) and peak memory for one input pipeline; optionally profiles of both steps."""
    log = get_logger()
    device = select_device(cfg)
    use_device(device)
    tic = time.perf_counter()
    train_set = build_dataset(cfg, is_train=True)
    loader = build_loader(cfg, train_set, True, device)  # the device pipeline copies its cache here
    setup_s = time.perf_counter() - tic
    seed_everything(cfg.BASIC.SEED)
    distiller = _build(cfg, method)
    optimizer, scaler = place_for_training(cfg, distiller, device)
    prep = BatchPreparer(cfg, device, channels_last=cfg.TRAIN.CHANNELS_LAST)
    step_fn = compile_step(cfg, distiller.forward_train)
    out = {"setup_s": round(setup_s, 2), "train_images": len(train_set)}

    images = [0]  # images taken from every stream so far (an epoch's last batch may be short)

    def stream(seed: int):
        """A fresh training stream (new workers) over many epochs, as a run iterates it; it counts its images.
        Close it to stop its workers."""
        loader.batch_sampler.set_epochs(range(seed * 10**6, (seed + 1) * 10**6))
        batches = signal_safe_iter(loader)
        try:
            for batch in batches:
                images[0] += len(batch["target"])
                yield batch
        finally:
            batches.close()  # a Ctrl-C held while the workers stop is raised here, not lost in a finaliser

    def rate(fn, steps: int, warmup: int, batch_images) -> float:
        """Images per second of `steps` timed calls of fn(i) after `warmup` untimed ones."""
        seconds = _time_loop(fn, steps, warmup, device)
        return sum(batch_images(warmup + i) for i in range(steps)) / seconds

    # Loader alone (including the device-side batch preparation). The first batch of a fresh stream is timed on
    # its own: a run pays it once, as its workers start.
    tic = time.perf_counter()
    it = stream(1)
    prep(next(it))
    _sync(device)
    out["stream_start_s"] = round(time.perf_counter() - tic, 3)
    for _ in range(warmup):
        prep(next(it))
    start = images[0]
    seconds = _time_loop(lambda i: prep(next(it)), steps, 0, device)
    it.close()
    out["loader_only_img_s"] = (images[0] - start) / seconds

    # Model alone: the whole training step on batches already on the device (the compute bound).
    it = stream(2)
    resident = [prep(next(it)) for _ in range(min(steps, 4))]
    it.close()

    def resident_images(i: int) -> int:
        return len(resident[i % len(resident)]["target"])

    distiller.train()
    _reset_peak(device)

    def model_step(i: int) -> None:
        optimizer_step(step_fn, resident[i % len(resident)], 1, optimizer, scaler, cfg, device)

    # Teacher forward alone (no gradients), on the large images.
    if distiller.teacher is not None:
        def teacher_step(i: int) -> None:
            with autocast(cfg, device):
                distiller.teacher_forward(resident[i % len(resident)]["image_large"])

        out["teacher_forward_img_s"] = rate(teacher_step, steps, warmup, resident_images)

    # End to end: the trainer's own train_epoch over a fresh training stream (workers, pinned copies, batch
    # preparation and all): `warmup` untimed steps take the workers' start and bring the prefetch queue to its
    # steady state (drained when the loader is the slower side), then `n` steps are timed.
    def train_steps(batches, n: int) -> None:
        train_epoch(distiller, batches, n, prep, optimizer, scaler, cfg, device, 1, "bench", step_fn)

    def steady_stream(seed: int):
        batches = stream(seed)
        train_steps(batches, warmup)
        _sync(device)
        return batches

    def end_to_end(seed: int, n: int) -> tuple[int, float]:
        """Images and seconds of `n` steady-state steps of a fresh stream."""
        batches = steady_stream(seed)
        start = images[0]
        tic = time.perf_counter()
        train_steps(batches, n)
        _sync(device)
        seconds = time.perf_counter() - tic
        batches.close()
        return images[0] - start, seconds

    # Model only and end to end alternate `repeats` times (after one warm-up of each) and the medians are
    # reported: short windows on a GPU vary with clocks, and alternating exposes both to the same drift.
    _time_loop(model_step, 0, warmup, device)
    # One untimed pass over an epoch's end: every batch shape of the stream (the short last batch of an epoch
    # included) has then been seen, so cuDNN's autotuner (CUDNN.BENCHMARK) and torch.compile never tune or
    # recompile for a new shape inside a timed window.
    batches = stream(3)
    train_steps(batches, warmup + loader.batch_sampler.batches_per_epoch)
    batches.close()
    model_rates, e2e_rates, e2e_images = [], [], []
    for r in range(repeats):
        model_rates.append(rate(model_step, steps, 0, resident_images))
        n_images, seconds = end_to_end(4 + r, steps)
        e2e_images.append(n_images)
        e2e_rates.append(n_images / seconds)
    out["model_only_img_s"] = statistics.median(model_rates)
    out["end_to_end_img_s"] = statistics.median(e2e_rates)
    out["end_to_end_vs_model_only"] = statistics.median(e / m for e, m in zip(e2e_rates, model_rates))
    out["peak_memory_mb"] = round(_peak_memory_mb(device), 1)
    out["repeats"] = {"model_only_img_s": [round(v, 1) for v in model_rates],
                      "end_to_end_img_s": [round(v, 1) for v in e2e_rates], "end_to_end_images": e2e_images}
    if profile_dir:
        # The same number of model-only and end-to-end steps under the profiler: where end to end spends
        # host time that model only does not is the input pipeline's cost on the main thread.
        make_folder(profile_dir)
        n = min(steps, 10)
        batches = steady_stream(99)
        tables = []
        for name, fn in (("model_only", lambda: _time_loop(model_step, n, 0, device)),
                         ("end_to_end", lambda: train_steps(batches, n))):
            trace = os.path.join(profile_dir, f"trace_{cfg.DATA.PIPELINE}_{name}.json")
            tables.append(f"== {cfg.DATA.PIPELINE} {name}: {n} steps (Chrome trace {trace})\n"
                          + _profile(fn, device, trace))
        batches.close()
        path = os.path.join(profile_dir, f"profile_{cfg.DATA.PIPELINE}.txt")
        atomic_write(path, lambda f: f.write("\n".join(tables).encode()))
        out["profile"] = path
    log.info(f"  {cfg.DATA.PIPELINE}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in out.items()))
    return out


def run_benchmark(cfg: CfgNode, steps: int = 20, warmup: int = 3,
                  pipelines: tuple[str, ...] = ("tensor", "pil", "device"), repeats: int = 3,
                  profile_dir: str | None = None, method: str = "auto") -> dict:
    """Measure `method` (see benchmark_method) on every pipeline of `pipelines`; the "tensor" figures (else the
    first pipeline's) are also given at the top level, which "pipeline" names.

    With `profile_dir`, each pipeline also gets Chrome traces of model-only and end-to-end steps and a table of
    the top host operations of each (profile_<pipeline>.txt) there.
    """
    with warnings_once():  # each pipeline selects the device again: the CPU fallback is said once
        return _run_benchmark(cfg, steps, warmup, pipelines, repeats, profile_dir, method)


def _run_benchmark(cfg: CfgNode, steps: int, warmup: int, pipelines: tuple[str, ...], repeats: int,
                   profile_dir: str | None, method: str) -> dict:
    configure_backends(cfg)
    device = select_device(cfg)
    method = benchmark_method(cfg, method)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({usable_cpus()} cores)"
    result: dict = {
        "device": name, "method": method, "batch_size": cfg.TRAIN.BATCH_SIZE, "amp": cfg.TRAIN.AMP,
        "channels_last": cfg.TRAIN.CHANNELS_LAST,
        "compile": cfg.TRAIN.COMPILE and f"{cfg.TRAIN.COMPILE_BACKEND} {cfg.TRAIN.COMPILE_MODE}",
        "num_workers": min(cfg.BASIC.NUM_WORKERS, usable_cpus()), "steps": steps, "warmup": warmup,
        "repeats": repeats,
        "torch": torch.__version__, "pipelines": {},
    }
    for pipeline in pipelines:
        result["pipelines"][pipeline] = measure_pipeline(_with_pipeline(cfg, pipeline), method, steps, warmup, repeats,
                                                         profile_dir)
    top = "tensor" if "tensor" in result["pipelines"] else next(iter(result["pipelines"]))
    result["pipeline"] = top
    result.update({k: v for k, v in result["pipelines"][top].items()
                   if k.endswith("_img_s") or k in ("peak_memory_mb",)})
    return result


def format_benchmark(result: dict) -> str:
    """A table of the figures, one row per pipeline."""
    keys = ["end_to_end_img_s", "model_only_img_s", "teacher_forward_img_s", "loader_only_img_s",
            "end_to_end_vs_model_only", "peak_memory_mb", "stream_start_s", "setup_s"]
    lines = [f"device: {result['device']}  method: {result['method']}  batch {result['batch_size']}  "
             f"amp {result['amp']}  channels_last {result['channels_last']}  compile {result['compile']}  "
             f"workers {result['num_workers']}",
             "pipeline  " + "  ".join(f"{k:>24}" for k in keys)]
    for pipeline, row in result["pipelines"].items():
        cells = [f"{row[k]:>24.3g}" if k in row else f"{'-':>24}" for k in keys]
        lines.append(f"{pipeline:<8}  " + "  ".join(cells))
    return "\n".join(lines)
