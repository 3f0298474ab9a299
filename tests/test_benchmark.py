"""tools/benchmark.py: every figure of every pipeline lands in benchmark.json (no timing is asserted)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from lib.config import KDTYPES, REPO_ROOT

from .conftest import one_error_line, run_cli

KEYS = ("end_to_end_img_s", "model_only_img_s", "loader_only_img_s", "teacher_forward_img_s", "peak_memory_mb")


def test_benchmark_measures_every_pipeline_and_writes_benchmark_json(tiny_cub, write_config, tmp_path, monkeypatch,
                                                                    capsys):
    # No teacher checkpoint: the benchmark stands in a random-weight teacher (speed only). GPU 0 asked for, no CUDA.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_config({"MODEL": {"ARCH_T": "resnet18", "ARCH_S": "resnet18"}, "FSR": {"ETA": 10.0},
                           "DATA": {"LESSEN_RATIO": 2.0}, "BASIC": {"DEVICE": "auto", "GPU_ID": [0]}}, tiny_cub)
    assert run_cli("tools/benchmark.py", "--config_file", config, "--steps", "2", "--warmup", "1", "--repeats", "1",
                   monkeypatch=monkeypatch) == 0
    result = json.loads((tmp_path / "ckpt" / "benchmark.json").read_text())
    assert result["method"] == "isrd" and result["device"].startswith("cpu")
    assert list(result["pipelines"]) == ["tensor", "pil", "device"]
    for pipeline, row in result["pipelines"].items():
        assert all(row[key] > 0 for key in KEYS) and row["stream_start_s"] > 0, (pipeline, row)
        assert len(row["repeats"]["end_to_end_img_s"]) == 1
    assert result["pipeline"] == "tensor" and all(result[key] == result["pipelines"]["tensor"][key] for key in KEYS)
    assert not (tmp_path / "ckpt" / "profile").exists()  # only with --profile
    out = capsys.readouterr().out
    assert "end_to_end_img_s" in out
    assert out.count("warning: CUDA is not available") == 1, out  # each pipeline selects the device: said once


def test_benchmark_measures_the_method_asked_for_and_names_the_pipeline_of_its_top_level_figures(
        tiny_cub, write_config, tmp_path, monkeypatch, capsys):
    # An ISRD config (FSR.ETA > 0) with MODEL.KDTYPE at, as the demo's configs serve both scripts.
    config = write_config({"MODEL": {"ARCH_T": "resnet18", "ARCH_S": "resnet18", "KDTYPE": "at"},
                           "FSR": {"ETA": 10.0}, "DATA": {"LESSEN_RATIO": 2.0}, "BASIC": {"DEVICE": "cpu"}}, tiny_cub)
    flags = ("--steps", "1", "--warmup", "0", "--repeats", "1", "--pipelines", "device")
    assert run_cli("tools/benchmark.py", "--config_file", config, *flags, monkeypatch=monkeypatch) == 0
    assert "note: FSR.ETA > 0, so ISRD is measured; MODEL.KDTYPE at is not (--method at" in capsys.readouterr().out
    assert json.loads((tmp_path / "ckpt" / "benchmark.json").read_text())["method"] == "isrd"
    assert run_cli("tools/benchmark.py", "--config_file", config, *flags, "--method", "at",
                   monkeypatch=monkeypatch) == 0
    result = json.loads((tmp_path / "ckpt" / "benchmark.json").read_text())
    assert result["method"] == "at" and "note:" not in capsys.readouterr().out
    assert result["pipeline"] == "device" and all(result[key] == result["pipelines"]["device"][key] for key in KEYS)
    # A teacher file named but not there (the demo's, before its teacher is trained): said, and measured with a
    # random-weight teacher (it was silent).
    missing = tmp_path / "ckpt" / "teacher" / "model_best.pth"
    assert run_cli("tools/benchmark.py", "--config_file", config, *flags, "MODEL.MODELDICT_T", str(missing),
                   monkeypatch=monkeypatch) == 0
    assert (f"note: MODEL.MODELDICT_T {missing} is not there; a random-weight teacher stands in, which runs at the "
            "same speed") in capsys.readouterr().out


def test_benchmark_counts_the_short_last_batch_of_an_epoch(tiny_cub, write_config, tmp_path, monkeypatch):
    # 16 training images in batches of 6: every epoch is 6, 6, 4. One warm-up step, then two timed steps of each
    # fresh stream: its 2nd and 3rd batches, 10 images (not 2 x 6).
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "TRAIN": {"BATCH_SIZE": 6}, "BASIC": {"DEVICE": "cpu"}},
                          tiny_cub)
    assert run_cli("tools/benchmark.py", "--config_file", config, "--steps", "2", "--warmup", "1", "--repeats", "2",
                   "--pipelines", "tensor", "--profile", monkeypatch=monkeypatch) == 0
    row = json.loads((tmp_path / "ckpt" / "benchmark.json").read_text())["pipelines"]["tensor"]
    assert row["repeats"]["end_to_end_images"] == [10, 10]  # the profiled steps come after the timed ones
    # --profile: per pipeline, traces of both steps and a table of where the host time goes.
    profile = tmp_path / "ckpt" / "profile"
    table = (profile / "profile_tensor.txt").read_text()
    assert "== tensor model_only" in table and "== tensor end_to_end" in table and "aten::" in table
    for step in ("model_only", "end_to_end"):
        assert json.loads((profile / f"trace_tensor_{step}.json").read_text())["traceEvents"]


@pytest.mark.parametrize("flags, words", [
    (["--steps", "0"], ["--steps must be >= 1", "got --steps 0"]),
    (["--steps", "-3"], ["--steps must be >= 1", "got --steps -3"]),
    (["--warmup", "-1"], ["--warmup >= 0", "--warmup -1"]),
    (["--repeats", "0"], ["--repeats >= 1", "--repeats 0"]),
    (["--pipelines", "tensor,gpu"], ["--pipelines takes a comma-separated list of tensor, pil, device",
                                     "'tensor,gpu'"]),
    # Was "overrides come in KEY VALUE pairs; 'pil' has no value".
    (["--pipelines", "tensor", "pil", "SOLVER.NUM_EPOCHS", "1"],
     ["--pipelines takes one comma-separated word, e.g. --pipelines tensor,pil; pil came as a word of its own"]),
    (["--method", "crd"], [f"--method must be one of auto, single, {', '.join(KDTYPES)}, isrd", "'crd'"]),
    (["--method", "isrd"], ["--method isrd distils from a teacher, but MODEL.ARCH_T is empty"]),
])
def test_benchmark_flag_mistakes_are_one_line_and_write_nothing(flags, words, tiny_cub, write_config, tmp_path,
                                                                monkeypatch, capsys):
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "BASIC": {"DEVICE": "cpu"}}, tiny_cub)
    assert run_cli("tools/benchmark.py", "--config_file", config, *flags, monkeypatch=monkeypatch) == 2
    line = one_error_line(capsys.readouterr().err)
    assert all(word in line for word in words), line
    assert not (tmp_path / "ckpt").exists()


def _gpu_benchmark_script(*args: str, cwd, env: dict | None = None) -> tuple[subprocess.Popen, str, str]:
    """Run tools/gpu_benchmark.sh in its own session: if it went on benchmarking, the timeout kills the benchmarks
    it started too."""
    env = {"PYTHON": sys.executable, **os.environ, **(env or {})}
    proc = subprocess.Popen(["bash", os.path.join(REPO_ROOT, "tools", "gpu_benchmark.sh"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc, out, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_benchmark_script_without_a_gpu_is_one_line_and_writes_nothing(tmp_path):
    proc, out, err = _gpu_benchmark_script(str(tmp_path / "out"), cwd=REPO_ROOT)
    assert proc.returncode == 2 and out == ""
    assert one_error_line(err) == ("error: tools/gpu_benchmark.sh needs a CUDA GPU; on the CPU use python "
                                   "tools/benchmark.py --config_file configs/bench/cpu_isrd.yaml")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool", ["benchmark", "cost"])
def test_a_blocked_output_folder_fails_before_anything_is_measured_naming_the_file(tool, tiny_cub, write_config,
                                                                                   tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder is needed")
    if tool == "benchmark":
        config = write_config({"MODEL": {"ARCH": "resnet18"}, "BASIC": {"DEVICE": "cpu"}}, tiny_cub)
        args = ["tools/benchmark.py", "--config_file", config, "BASIC.OUTPUT_ROOT", f"'{blocker / 'bench'}'"]
    else:
        args = ["tools/cost.py", "--archs", "resnet18", "--sizes", "32", "--device", "cpu", "--out",
                str(blocker / "cost")]
    assert run_cli(*args, monkeypatch=monkeypatch) == 2
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert f"the file {blocker} stands where a folder is needed" in line, line
    assert "img_s" not in out and "GFLOPs" not in out  # nothing was measured first


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="only Linux can restart a process's peak RSS")
def test_resetting_the_cpu_peak_forgets_memory_freed_before_so_each_pipeline_has_its_own_peak():
    from lib.engine.benchmark import _peak_memory_mb, _reset_peak

    cpu = torch.device("cpu")
    block = torch.ones(50 * 2**20)  # 200 MB touched
    del block
    before = _peak_memory_mb(cpu)
    _reset_peak(cpu)
    # Linux restarts the peak RSS (VmHWM); the 200 MB freed above no longer count.
    assert _peak_memory_mb(cpu) < before - 150


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_gpu_benchmark_script_help_prints_its_usage_and_exits_0_without_a_gpu_check_or_a_folder(flag, tmp_path):
    proc, out, err = _gpu_benchmark_script(flag, cwd=tmp_path)  # one that took the flag for OUT would benchmark
    assert proc.returncode == 0 and err == "", err
    assert out.startswith("usage: bash tools/gpu_benchmark.sh [OUT [WORK]]\n"), out
    text = " ".join(out.split())
    assert "The GPU checks and figures of the README's performance section" in text  # the header: what it does
    assert "OUT: the folder that receives gpu.txt" in text and "(default: ckpt/bench_gpu)" in text
    assert os.listdir(tmp_path) == []


# A stand-in for python on a machine with a GPU: the GPU check and the script's steps are faked (fp16_cl fails),
# the rest (the JSON lines it writes) is the real interpreter. It refuses to run outside the repository root.
FAKE_PYTHON = """#!/usr/bin/env bash
[[ -f tools/benchmark.py ]] || { echo "not in the repository root"; exit 3; }
case "$1 $2" in
  "-c import importlib.util, torch, torchvision, yacs, lib.engine;"*) exit 0 ;;
  "-c import sys, torch"*) echo "python fake torch fake"; exit 0 ;;
  "-m pytest"*) echo "3 passed"; exit 0 ;;
esac
if [[ $1 == tools/benchmark.py ]]; then
  # benchmark.py refuses a flag given twice (the step's own --repeats after the script's default was one).
  twice=$(printf '%s\n' "$@" | grep -- '^--' | sort | uniq -d)
  [[ -n $twice ]] && { echo "error: $twice is given twice"; exit 2; }
  root=${@: -1}; root=${root//\\'/}
  mkdir -p "$root"
  [[ $root == */fp16_cl ]] && { echo "Traceback: a fake failure"; exit 1; }
  [[ $root == */profile ]] && { mkdir -p "$root/profile"; echo "a profile table" > "$root/profile/profile_tensor.txt"; }
  echo '{"device": "fake", "end_to_end_img_s": 1.0}' > "$root/benchmark.json"
  exit 0
fi
[[ $1 == tools_0_base/* ]] && { echo "trained"; exit 0; }
exec {real} "$@"
"""


def test_gpu_benchmark_script_leaves_four_files_in_out_and_names_the_step_that_failed(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(FAKE_PYTHON.replace("{real}", sys.executable))
    (fake / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'Fake GPU, 81559 MiB, 580.00'\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    out, work = tmp_path / "out", tmp_path / "work"
    # Called from elsewhere (not the repository root) with relative folders.
    proc, stdout, err = _gpu_benchmark_script("out", "work", cwd=tmp_path,
                                              env={"PYTHON": str(fake / "python"),
                                                   "PATH": f"{fake}:{os.environ['PATH']}"})
    assert proc.returncode == 1, stdout + err
    assert sorted(os.listdir(out)) == ["benchmarks.jsonl", "gpu.txt", "log.txt", "profile.txt"]
    lines = [json.loads(line) for line in (out / "benchmarks.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == ["bf16_cl", "fp32", "bf16", "workers4", "profile", "compile",
                                               "compile_cudagraphs"]  # the cold compile builds last
    assert all(line["benchmark"]["device"] == "fake" and line["seconds"] >= 0 for line in lines)
    assert (out / "gpu.txt").read_text() == "Fake GPU, 81559 MiB, 580.00\npython fake torch fake\n"
    assert (out / "profile.txt").read_text() == "a profile table\n"
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("failed steps: fp16_cl (") and str(work) in last, stdout
    log = (out / "log.txt").read_text()
    assert "Traceback: a fake failure" in log and "3 passed" in log and log.strip().endswith(last)
    assert (work / "demo_tensor.log").read_text() == "trained\n"


def test_gpu_benchmark_script_refuses_an_option_it_does_not_know_instead_of_taking_it_for_out(tmp_path):
    proc, out, err = _gpu_benchmark_script("--out", "x", cwd=tmp_path)
    assert proc.returncode == 2 and out == ""
    assert one_error_line(err).startswith("error: tools/gpu_benchmark.sh: unknown option --out; usage: ")
    assert os.listdir(tmp_path) == []


def test_gpu_benchmark_script_with_an_interpreter_that_lacks_the_project_is_one_line_and_writes_nothing(tmp_path):
    proc, out, err = _gpu_benchmark_script(str(tmp_path / "out"), cwd=tmp_path,
                                           env={"PYTHON": str(tmp_path / "no-such-python")})
    assert proc.returncode == 2 and out == ""
    line = one_error_line(err)
    assert "no-such-python cannot import torch, torchvision, timm, yacs and this project's lib" in line, line
    assert "set PYTHON to the interpreter that has them" in line
    assert os.listdir(tmp_path) == []
