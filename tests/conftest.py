"""Fixtures every test directory shares (the builders are plain functions in builders.py):
a temporary bin directory first on PATH, a fake crontab, and a running Slurm cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builders import FAKE_CRONTAB, SLURM_CLUSTER_SCRIPT, SLURM_DIR, read_slurm_env


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


@pytest.fixture
def fake_crontab(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "crontab").write_text(FAKE_CRONTAB)
    (bin_dir / "crontab").chmod(0o755)
    table = tmp_path / "crontab.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CRONTAB_FILE", str(table))
    return table


@pytest.fixture(scope="module")
def slurm_cluster():
    """SLURM_CONF of a running cluster, in os.environ for the module (skip without Slurm)."""
    if shutil.which("sbatch") is None or not (shutil.which("slurmctld")
                                              or Path("/usr/sbin/slurmctld").exists()):
        pytest.skip("Slurm is not installed (apt-get install slurmctld slurmd slurm-client "
                    "munge; .ci/run does this)")
    started_here = False
    status = subprocess.run(["bash", str(SLURM_CLUSTER_SCRIPT), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        start = subprocess.run(["bash", str(SLURM_CLUSTER_SCRIPT), "start"], capture_output=True, text=True,
                               timeout=120)
        if start.returncode != 0:
            pytest.skip(f"Slurm is installed but the test cluster did not start: "
                        f"{start.stderr.strip().splitlines()[-1:]}")
        started_here = True
    env = read_slurm_env()
    if "SLURM_CONF" not in env:
        pytest.skip(f"no SLURM_CONF in {SLURM_DIR / 'env'}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    try:
        yield env["SLURM_CONF"]
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        if started_here:
            subprocess.run(["bash", str(SLURM_CLUSTER_SCRIPT), "stop"], capture_output=True, timeout=120)
