import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import time

import setuptools

from lib.config import REPO_ROOT


def _setup_arguments(monkeypatch) -> dict:
    """The arguments setup.py passes to setuptools.setup, without building anything."""
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    runpy.run_path(os.path.join(REPO_ROOT, "setup.py"), run_name="__main__")
    return captured


def test_the_package_requires_every_runtime_range_of_requirements_txt_and_no_dev_tool(monkeypatch):
    requires = _setup_arguments(monkeypatch)["install_requires"]
    with open(os.path.join(REPO_ROOT, "requirements.txt")) as f:
        listed = [line for line in (raw.split("#")[0].strip() for raw in f) if line]
    dev = [line for line in listed if line.startswith(("pytest", "ruff"))]
    assert len(dev) == 2
    assert sorted(requires) == sorted(set(listed) - set(dev))
    assert "torch>=2.4" in requires and "timm>=1.0.21" in requires  # comments stripped, ranges kept as written


def test_a_source_distribution_carries_the_requirements_txt_that_setup_py_reads(tmp_path):
    # setup.py reads requirements.txt: an sdist without it could not be installed.
    for name in ("setup.py", "requirements.txt", "MANIFEST.in"):
        shutil.copy(os.path.join(REPO_ROOT, name), tmp_path)
    shutil.copytree(os.path.join(REPO_ROOT, "lib"), tmp_path / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", "dist"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (archive,) = (tmp_path / "dist").iterdir()
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"requirements.txt", "setup.py", "lib/engine/trainer.py"} <= names


def test_a_hung_test_ends_the_suite_with_every_threads_traceback_instead_of_running_on(tmp_path):
    # The suite's own conftest.py beside a test that would sleep for ten minutes, with a 2-second limit.
    shutil.copy(os.path.join(REPO_ROOT, "tests", "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text("import time\n\n\ndef test_waits_on_something():\n    time.sleep(600)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probe.py"],
                          cwd=tmp_path, env={**os.environ, "PD_TEST_TIMEOUT_S": "2"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and time.monotonic() - start < 120
    assert "Timeout (0:00:02)!" in proc.stderr and 'test_probe.py", line 5 in test_waits_on_something' in proc.stderr
