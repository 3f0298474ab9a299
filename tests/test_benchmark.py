"""tools/benchmark.py: every figure of every pipeline lands in benchmark.json (no timing is asserted)."""

import json

from .conftest import run_cli

KEYS = ("end_to_end_img_s", "model_only_img_s", "loader_only_img_s", "teacher_forward_img_s", "peak_memory_mb")


def test_benchmark_measures_every_pipeline_and_writes_benchmark_json(tiny_cub, write_config, tmp_path, monkeypatch,
                                                                    capsys):
    # No teacher checkpoint: the benchmark stands in a random-weight teacher (speed only).
    config = write_config({"MODEL": {"ARCH_T": "resnet18", "ARCH_S": "resnet18"}, "FSR": {"ETA": 10.0},
                           "DATA": {"LESSEN_RATIO": 2.0}, "BASIC": {"DEVICE": "cpu"}}, tiny_cub)
    assert run_cli("tools/benchmark.py", "--config_file", config, "--steps", "2", "--warmup", "1", "--repeats", "2",
                   "--profile", monkeypatch=monkeypatch) == 0
    result = json.loads((tmp_path / "ckpt" / "benchmark.json").read_text())
    assert result["method"] == "isrd" and result["device"].startswith("cpu")
    assert list(result["pipelines"]) == ["tensor", "pil", "device"]
    for pipeline, row in result["pipelines"].items():
        assert all(row[key] > 0 for key in KEYS) and row["stream_start_s"] > 0, (pipeline, row)
        assert len(row["repeats"]["end_to_end_img_s"]) == 2
    assert all(result[key] == result["pipelines"]["tensor"][key] for key in KEYS)
    # --profile: per pipeline, traces of both steps and a table of where the host time goes.
    profile = tmp_path / "ckpt" / "profile"
    for pipeline in ("tensor", "pil", "device"):
        table = (profile / f"profile_{pipeline}.txt").read_text()
        assert f"== {pipeline} model_only" in table and f"== {pipeline} end_to_end" in table and "aten::" in table
        for step in ("model_only", "end_to_end"):
            assert json.loads((profile / f"trace_{pipeline}_{step}.json").read_text())["traceEvents"]
    assert "end_to_end_img_s" in capsys.readouterr().out


def test_benchmark_counts_the_short_last_batch_of_an_epoch(tiny_cub, write_config, tmp_path, monkeypatch):
    # 16 training images in batches of 6: every epoch is 6, 6, 4. One warm-up step, then two timed steps of each
    # fresh stream: its 2nd and 3rd batches, 10 images (not 2 x 6).
    config = write_config({"MODEL": {"ARCH": "resnet18"}, "TRAIN": {"BATCH_SIZE": 6}, "BASIC": {"DEVICE": "cpu"}},
                          tiny_cub)
    assert run_cli("tools/benchmark.py", "--config_file", config, "--steps", "2", "--warmup", "1", "--repeats", "2",
                   "--pipelines", "tensor", monkeypatch=monkeypatch) == 0
    row = json.loads((tmp_path / "ckpt" / "benchmark.json").read_text())["pipelines"]["tensor"]
    assert row["repeats"]["end_to_end_images"] == [10, 10]
