"""The GPU install switch (`make install TF=gpu`) and the systemd drop-in for GPU hosts. No GPU here: what is checked
is the plan -- the two locks agree, a venv with one TensorFlow build refuses the other, the drop-in passes systemd's
verifier and really opens the device sandbox -- and, with ODAL_TEST_GPU_RESOLVE=1 (minutes, downloads the CUDA
wheels' metadata), that pip resolves the GPU install to exactly requirements-gpu.lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from test_systemd_unit import MAX_EXPOSURE, exposure, runnable_copy, supports_offline_security, verify

REPO = Path(__file__).resolve().parents[1]
DROP_IN = REPO / "systemd" / "odal-daemon.service.d" / "gpu.conf"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
# Left out of the GPU lock: the CPU wheel, and the OD API research package, which requirements.lock also lists but
# make install takes from requirements-nodeps.txt (--no-deps), whatever the build.
CPU_ONLY = {"tensorflow-cpu", "tf-models-research-object-detection"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        if line and not line.startswith("#"):
            package, version = line.split("==")
            pins[canonical(package)] = version
    return pins


def test_gpu_lock_is_the_cpu_lock_with_the_cuda_build_of_the_same_tensorflow():
    """Every package both builds install has the same version in both locks; the GPU lock swaps tensorflow-cpu for
    tensorflow at the same version plus NVIDIA's CUDA wheels, and pyproject's cpu/gpu extras pin that version."""
    cpu, gpu = read_lock("requirements.lock"), read_lock("requirements-gpu.lock")
    shared = cpu.keys() & gpu.keys()
    assert {name: (cpu[name], gpu[name]) for name in shared if cpu[name] != gpu[name]} == {}
    assert cpu.keys() - gpu.keys() == CPU_ONLY
    gpu_only = gpu.keys() - cpu.keys()
    assert "tensorflow" in gpu_only and gpu["tensorflow"] == cpu["tensorflow-cpu"]
    assert {name for name in gpu_only - {"tensorflow"} if not name.startswith("nvidia-")} == set()
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"} <= gpu_only
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["cpu"] == [f"tensorflow-cpu=={cpu['tensorflow-cpu']}"]
    assert project["optional-dependencies"]["gpu"] == [f"tensorflow[and-cuda]=={gpu['tensorflow']}"]
    assert not [dep for dep in project["dependencies"] if canonical(re.split(r"[\[=<>]", dep)[0]).startswith(
        "tensorflow")]


def test_make_install_gpu_refuses_a_venv_with_the_cpu_build():
    """`make install TF=gpu` into a venv holding tensorflow-cpu stops with a message saying how to rebuild, before
    pip runs (PIP_DRY_RUN and PIP_NO_INDEX guard this venv should the refusal ever break)."""
    venv = Path(sys.prefix)
    env = {**os.environ, "PIP_DRY_RUN": "1", "PIP_NO_INDEX": "1"}
    proc = subprocess.run(["make", "-C", str(REPO), "install", "TF=gpu", f"VENV={venv}"], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "already has tensorflow-cpu" in proc.stderr and "make clean install TF=gpu" in proc.stderr, proc.stderr
    assert "pip install" not in proc.stdout
    assert not (venv / ".odal-installed-gpu").exists()


@needs_analyze
def test_gpu_drop_in_passes_systemd_analyze_verify(tmp_path):
    """The real unit with the drop-in beside it (where systemd loads it from) passes systemd-analyze verify, and no
    line of its output names the drop-in."""
    unit = runnable_copy(tmp_path)
    (tmp_path / "odal-daemon.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "odal-daemon.service.d" / "gpu.conf")
    verify(unit)
    proc = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "gpu.conf" not in proc.stdout + proc.stderr


@needs_analyze
@pytest.mark.parametrize("line, broken", [
    ("DevicePolicy=closed", "DevicePolicyy=closed"),
    ("DeviceAllow=char-nvidia-uvm rw", "DeviceAllow=char-nvidia-uvm rwz"),
])
def test_verify_check_reads_the_drop_in(tmp_path, line, broken):
    """The check is not vacuous: a misspelt key or an invalid device right in the drop-in fails verify."""
    unit = runnable_copy(tmp_path)
    (tmp_path / "odal-daemon.service.d").mkdir()
    text = DROP_IN.read_text()
    assert line in text
    (tmp_path / "odal-daemon.service.d" / "gpu.conf").write_text(text.replace(line, broken))
    with pytest.raises(AssertionError, match="gpu.conf"):
        verify(unit)


@needs_analyze
def test_gpu_drop_in_opens_only_the_nvidia_devices(tmp_path):
    """With the drop-in, systemd's own analysis sees hardware devices reachable (PrivateDevices off) through a device
    ACL naming the NVIDIA devices, and the unit's exposure stays within the bound."""
    if not supports_offline_security():
        pytest.skip("this systemd-analyze has no `security --offline` (added in systemd 250)")
    unit = runnable_copy(tmp_path)
    (tmp_path / "odal-daemon.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "odal-daemon.service.d" / "gpu.conf")
    proc = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert "potentially has access to hardware devices" in proc.stdout
    acl = next(line for line in proc.stdout.splitlines() if line.startswith("✗ DeviceAllow="))
    assert "char-nvidia-frontend:rw" in acl and "char-nvidia-uvm:rw" in acl
    score = exposure(unit)
    print(f"exposure with gpu.conf {score}")
    assert score <= MAX_EXPOSURE


@pytest.mark.skipif(not os.environ.get("ODAL_TEST_GPU_RESOLVE"), reason="set ODAL_TEST_GPU_RESOLVE=1 (minutes)")
def test_pip_resolves_the_gpu_install_to_the_gpu_lock(tmp_path):
    """pip resolves `.[test,gpu]` under requirements-gpu.lock (a dry run: nothing is installed) to exactly the
    lock's packages and versions."""
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report",
                    str(report), "-c", str(REPO / "requirements-gpu.lock"), "-e", f"{REPO}[test,gpu]"],
                   check=True, timeout=1800)
    resolved = {canonical(p["metadata"]["name"]): p["metadata"]["version"] for p in json.loads(report.read_text())[
        "install"] if canonical(p["metadata"]["name"]) not in ("odal", "pip", "setuptools", "wheel")}
    assert resolved == read_lock("requirements-gpu.lock")
