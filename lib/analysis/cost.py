"""Deployment cost of an architecture at an input size: parameters, FLOPs, activation memory, latency, input bytes.

Pixel distillation trades architecture against input size; this measures both sides of the trade.

- FLOPs: PyTorch's own torch.utils.flop_counter.FlopCounterMode over one forward of one image, on the CPU, with
  attention forced onto SDPA's math kernel so that its matrix products are counted (the fused CPU kernel is not).
  FlopCounterMode counts a multiply-add as 2 FLOPs; MACs = FLOPs / 2 is the figure papers usually quote as
  "FLOPs" (ResNet-18 at 224 px: 3.63 GFLOPs = 1.81 GMACs; ViT-B/16: 35.1 GFLOPs = 17.6 GMACs).
- Peak activation memory: the most memory held by tensors created during one inference forward at a batch size,
  the weights and the input excluded. On CUDA: torch.cuda.max_memory_allocated during the forward minus what was
  allocated before it (so cuDNN workspaces taken through PyTorch's allocator count). On the CPU, where PyTorch
  keeps no allocator statistics: LiveTensorBytes, a TorchDispatchMode that adds the storage of every op's new
  outputs and subtracts it when the last tensor on that storage dies, and keeps the maximum. Library-internal
  scratch buffers (oneDNN) are not seen, so CPU figures are a lower bound of the process's extra memory.
- Latency: inference-mode forward of a zero batch, `warmup` untimed runs then the median of `repeats` timed runs
  (CUDA synchronised around each), in milliseconds per batch; CPU figures depend on torch.get_num_threads().
- Input cost: pixels and bytes of one uint8 RGB image (3 bytes a pixel), what the camera captures and the link
  carries before any network runs: 224 px is 150,528 bytes, 56 px 9,408 (16x less).
"""

from __future__ import annotations

import functools
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from lib.engine.checkpoint import save_json
from lib.models.model_builder import (
    ARCHS,
    CNN_MIN_INPUT_SIZE,
    VIT_FAMILIES,
    VIT_PATCH_SIZE,
    build_model,
    is_vit,
    parse_arch,
)
from lib.utils.errors import UserError, make_folder, out_of_memory_message

from . import markdown_table, write_csv, write_text
from .cost_defaults import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_NUM_CLASSES,
    DEFAULT_REPEATS,
    DEFAULT_SIZES,
    DEFAULT_WARMUP,
)

__all__ = [
    "DEFAULT_SIZES",
    "DEFAULT_BATCH_SIZES",
    "LiveTensorBytes",
    "default_archs",
    "expand_archs",
    "count_params",
    "count_flops",
    "flops_of",
    "input_cost",
    "peak_activation_bytes",
    "median_latency_ms",
    "resolve_device",
    "measure",
    "run_cost",
    "format_markdown",
]

RGB_BYTES_PER_PIXEL = 3
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated during the forward minus the memory allocated before it",
    "cpu": "peak of live tensor storage created during the forward (LiveTensorBytes dispatch mode)",
}


def default_archs() -> list[str]:
    """Every architecture of the model builder: the CNNs and the ViT families (measured at each size)."""
    return [*ARCHS, *VIT_FAMILIES]


def expand_archs(archs: Sequence[str], sizes: Sequence[int]) -> list[tuple[str, int]]:
    """(model name, input size) pairs: CNNs and ViT families at every size, a sized ViT name at its own size."""
    if not archs or not sizes:
        raise UserError("name at least one architecture (--archs) and one input size (--sizes)")
    if any(size <= 0 for size in sizes):
        raise UserError(f"--sizes must be positive, got {list(sizes)}")
    pairs: list[tuple[str, int]] = []
    for arch in archs:
        if arch in VIT_FAMILIES:
            pairs += [(f"{arch}_{size}", size) for size in sizes]
            continue
        _, vit_size = parse_arch(arch)  # UserError listing the valid names
        pairs += [(arch, vit_size)] if vit_size is not None else [(arch, size) for size in sizes]
    for name, size in pairs:
        smallest = VIT_PATCH_SIZE if is_vit(name) else CNN_MIN_INPUT_SIZE
        if size < smallest:
            source = "its name in --archs" if is_vit(name) and name in archs else "--sizes"  # (measured at its size)
            raise UserError(f"{name} cannot take {size} px inputs ({source}): it needs at least {smallest} px")
    return list(dict.fromkeys(pairs))


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, size: int) -> int:
    """FLOPs (2 per multiply-add) of one forward of one `size` x `size` image, counted on the CPU."""
    model = model.eval()
    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    # The fused SDPA kernels of the CPU are not in FlopCounterMode's table; the math kernel is plain bmm.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


@functools.cache
def flops_of(arch: str, size: int, num_classes: int = DEFAULT_NUM_CLASSES) -> int:
    """FLOPs of architecture `arch` at `size` px (cached)."""
    with torch.device("meta"):  # shapes alone: no weights initialised, no arithmetic done (the same count)
        model = build_model(arch, num_classes, False)
    return count_flops(model, size)


def input_cost(size: int) -> tuple[int, int]:
    """(pixels, bytes) of one uint8 RGB `size` x `size` image."""
    pixels = size * size
    return pixels, pixels * RGB_BYTES_PER_PIXEL


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storage created inside the mode and still alive; `peak` is their maximum.

    Storages that exist before (weights, the input) are not counted, nor are views of them. A storage is counted
    once however many views share it, and released when the last tracked tensor on it is garbage-collected.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}  # storage data_ptr -> live tracked tensors on it
        self._nbytes: dict[int, int] = {}
        self._external: set[int] = set()  # storages that were there before
        self._tracked: set[int] = set()  # id() of the tracked tensors

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self._refs:
                    self._external.add(ptr)
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in self._tracked:
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr in self._external or nbytes == 0:
            return
        if ptr not in self._refs:
            self._refs[ptr], self._nbytes[ptr] = 0, nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self._refs[ptr] += 1
        self._tracked.add(id(t))
        weakref.finalize(t, self._release, id(t), ptr)

    def _release(self, tensor_id: int, ptr: int) -> None:
        self._tracked.discard(tensor_id)
        self._refs[ptr] -= 1
        if self._refs[ptr] == 0:
            del self._refs[ptr]
            self.live -= self._nbytes.pop(ptr)


@torch.inference_mode()
def peak_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of the tensors one forward of `x` creates (see the module docstring for the method per device)."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
        out = model(x)
        torch.cuda.synchronize(x.device)
        peak = torch.cuda.max_memory_allocated(x.device) - before
        del out
        return int(peak)
    tracker = LiveTensorBytes()
    with tracker:
        out = model(x)
    del out
    return tracker.peak


# A container's (Docker, Slurm) memory limit and use: cgroup v2, then v1. The kernel kills at the limit, whatever
# the machine has free.
_CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _read_number(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])  # "max" (no limit) is not a number
    except (OSError, ValueError, IndexError):
        return None


def available_memory_bytes() -> int | None:
    """The memory this process can still take on the CPU, or None where unknown: /proc/meminfo's MemAvailable, or
    less where a container's memory limit leaves less."""
    free = []
    try:
        with open("/proc/meminfo") as f:
            free += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]  # kB
    except (OSError, ValueError, IndexError):
        pass
    for limit_path, usage_path in _CGROUP_MEMORY:
        limit, usage = _read_number(limit_path), _read_number(usage_path)
        if limit is not None and usage is not None:
            free.append(max(limit - usage, 0))
            break
    return min(free) if free else None


def check_weights_fit_in_memory(arch: str, num_classes: int) -> None:
    """Refuse an architecture whose weights alone need more memory than this process can take (each model is built
    on the CPU first, whatever the device): counted on the meta device, nothing allocated. A classifier of
    100,000,000 classes died in the CPU allocator, with a hint at the batch sizes."""
    available = available_memory_bytes()
    if available is None:
        return
    with torch.device("meta"):
        params = count_params(build_model(arch, num_classes, False))
    if params * 4 > available:  # fp32
        raise UserError(f"--num-classes {num_classes}: {arch} has {params / 1e6:,.0f} M parameters "
                        f"({params * 4 / 2**30:.1f} GiB), more than the {available / 2**30:.1f} GiB this process "
                        f"can take; use a smaller --num-classes")


def check_fits_in_memory(arch: str, size: int, batch: int, num_classes: int) -> None:
    """Refuse a CPU measurement whose forward at `batch` would need more memory than this process can take (the
    kernel would kill it, no error to read): estimated as `batch` times one image's input and activations."""
    available = available_memory_bytes()
    if available is None:
        return
    model = build_model(arch, num_classes, False).eval()
    # A CNN's activations grow with the image's area: above 224 px they are measured at 224 and scaled, so that
    # a size mistyped by a digit (22400) is refused rather than tried for real. A ViT's size is in its name.
    ref = size if is_vit(arch) else min(size, 224)
    one = peak_activation_bytes(model, torch.zeros(1, 3, ref, ref)) * (size / ref) ** 2 + 3 * size * size * 4
    if batch * one > available:
        raise UserError(f"--batch-sizes {batch}: {arch} @ {size} px needs about {batch * one / 2**30:.1f} GiB for "
                        f"one forward at batch {batch}, more than the {available / 2**30:.1f} GiB this process can "
                        f"take; use smaller {'--sizes' if batch == 1 else '--batch-sizes or --sizes'}")


@torch.inference_mode()
def median_latency_ms(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int) -> float:
    """Median wall time (ms) of a forward of `x` over `repeats` runs after `warmup` untimed ones."""
    cuda = x.device.type == "cuda"
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(max(repeats, 1)):
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        model(x)
        if cuda:
            torch.cuda.synchronize(x.device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N', checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def measure(arch: str, size: int, batch_sizes: Sequence[int], device: torch.device, warmup: int, repeats: int,
            num_classes: int = DEFAULT_NUM_CLASSES) -> dict[str, Any]:
    """All costs of `arch` at `size` px: one row of the cost table.

    Args:
        arch: a model name of the builder (a ViT name carries its size).
        size: input side in pixels.
        batch_sizes: latency and memory are measured at each.
        device: where latency and memory are measured (FLOPs are always counted on the CPU).
        warmup: untimed forwards before timing.
        repeats: timed forwards; the median is reported.
        num_classes: classifier outputs.
    Returns:
        {"arch", "size", "params", "flops", "macs", "input_pixels", "input_bytes", "latency_ms": {batch: ms},
        "peak_mem_mb": {batch: MiB}}.
    """
    model = build_model(arch, num_classes, False).eval()
    flops = count_flops(model, size)
    pixels, nbytes = input_cost(size)
    row: dict[str, Any] = {"arch": arch, "size": size, "params": count_params(model), "flops": flops,
                           "macs": flops // 2, "input_pixels": pixels, "input_bytes": nbytes,
                           "latency_ms": {}, "peak_mem_mb": {}}
    model = model.to(device)
    for batch in batch_sizes:
        try:
            x = torch.zeros(batch, 3, size, size, device=device)
            row["latency_ms"][batch] = median_latency_ms(model, x, warmup, repeats)
            row["peak_mem_mb"][batch] = peak_activation_bytes(model, x) / 2**20
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one; the CPU allocator's is a plain one
            hint = f"{arch} @ {size} px does not fit at batch {batch}; use smaller --batch-sizes or free the GPU"
            message = out_of_memory_message(err, hint + " of other processes")
            if message is None:
                raise
            raise UserError(message) from None
        del x
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _flat(row: dict[str, Any], batch_sizes: Sequence[int]) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
    for batch in batch_sizes:
        flat[f"latency_ms_b{batch}"] = round(row["latency_ms"][batch], 4)
    for batch in batch_sizes:
        flat[f"peak_mem_mb_b{batch}"] = round(row["peak_mem_mb"][batch], 3)
    return flat


def format_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The cost table as markdown, with the measurement conditions below it."""
    batches = meta["batch_sizes"]
    headers = ["arch", "size", "params (M)", "GFLOPs", "GMACs", "pixels", "input bytes"]
    headers += [f"latency b{b} (ms)" for b in batches] + [f"peak act. mem b{b} (MiB)" for b in batches]
    table = []
    for r in rows:
        line = [r["arch"], r["size"], round(r["params"] / 1e6, 2), round(r["flops"] / 1e9, 3),
                round(r["macs"] / 1e9, 3), r["input_pixels"], r["input_bytes"]]
        line += [round(r["latency_ms"][b], 2) for b in batches] + [round(r["peak_mem_mb"][b], 2) for b in batches]
        table.append(line)
    notes = (
        f"\nDevice: {meta['device_name']} ({meta['device']}); torch {meta['torch']}"
        + (f", {meta['cpu_threads']} CPU threads" if meta["device"] == "cpu" else "")
        + f". Latency: median of {meta['repeats']} forwards after {meta['warmup']} warm-up, per batch. "
        f"FLOPs: torch.utils.flop_counter (a multiply-add = 2 FLOPs; GMACs = GFLOPs / 2). "
        f"Peak activation memory: {meta['memory_method']}. Input bytes: uint8 RGB, 3 bytes a pixel.\n"
    )
    return markdown_table(headers, table) + notes


def run_cost(archs: Sequence[str], sizes: Sequence[int], batch_sizes: Sequence[int], device_name: str,
             warmup: int | None, repeats: int | None, out_dir: str, num_classes: int = DEFAULT_NUM_CLASSES,
             log: Callable[[str], object] = print) -> list[dict[str, Any]]:
    """Measure every (arch, size) pair and write cost.md, cost.csv and cost.json into `out_dir`.

    Args:
        archs: builder names; ViT families (vit_tiny_patch16) are measured at every size.
        sizes: input sizes in pixels.
        batch_sizes: batch sizes of the latency and memory measurements.
        device_name: auto, cpu, cuda or cuda:N.
        warmup: untimed forwards (None: 5 on CUDA, 1 on the CPU).
        repeats: timed forwards (None: 20 on CUDA, 5 on the CPU).
        out_dir: output folder.
        num_classes: classifier outputs of the measured models.
        log: where progress lines go.
    Returns:
        The rows, as in cost.json.
    """
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise UserError(f"--batch-sizes must be positive integers, got {list(batch_sizes)}")
    if (warmup is not None and warmup < 0) or (repeats is not None and repeats < 1):
        raise UserError("--warmup must be >= 0 and --repeats >= 1")
    if num_classes < 1:
        raise UserError(f"--num-classes must be positive, got {num_classes}")
    pairs = expand_archs(archs, sizes)
    device = resolve_device(device_name)
    warmup = DEFAULT_WARMUP[device.type] if warmup is None else warmup
    repeats = DEFAULT_REPEATS[device.type] if repeats is None else repeats
    batch_sizes = list(dict.fromkeys(batch_sizes))
    # Every check before any measurement: a refusal throws no measurement away.
    for arch in dict.fromkeys(arch for arch, _ in pairs):
        check_weights_fit_in_memory(arch, num_classes)
    make_folder(out_dir)  # a blocked or forbidden folder fails now, not after the measurements
    meta = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "warmup": warmup,
        "repeats": repeats,
        "batch_sizes": batch_sizes,
        "num_classes": num_classes,
        "flops": "torch.utils.flop_counter.FlopCounterMode, one image, SDPA math kernel; multiply-add = 2 FLOPs",
        "memory_method": MEMORY_METHOD[device.type],
        "input_bytes": "uint8 RGB, 3 bytes a pixel",
    }
    if device.type == "cpu":  # every pair before any is measured
        for arch, size in pairs:
            check_fits_in_memory(arch, size, max(batch_sizes), num_classes)
    rows = []
    for i, (arch, size) in enumerate(pairs, 1):
        row = measure(arch, size, batch_sizes, device, warmup, repeats, num_classes)
        rows.append(row)
        lat = ", ".join(f"b{b} {row['latency_ms'][b]:.2f} ms" for b in batch_sizes)
        log(f"[{i}/{len(pairs)}] {arch} @ {size}: {row['params'] / 1e6:.2f} M params, "
            f"{row['flops'] / 1e9:.3f} GFLOPs, {lat}")
    flat = [_flat(r, batch_sizes) for r in rows]
    headers = list(flat[0])
    write_csv(f"{out_dir}/cost.csv", headers, [[r[h] for h in headers] for r in flat])
    write_text(f"{out_dir}/cost.md", format_markdown(rows, meta))
    save_json({"meta": meta, "rows": flat}, f"{out_dir}/cost.json")
    return rows
