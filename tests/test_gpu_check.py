"""benchmarks/gpu_check.py on this CPU machine: it skips the GPU with a message, runs every
check on the CPU when allowed, and fails (exit 1) when a check fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SMALL = ["--allow-cpu", "--arch", "tsm_mobilenet_v2", "--size", "32", "--batch", "2"]


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real checks")
def test_without_cuda_every_check_is_skipped_with_a_message():
    result = check()
    assert result.returncode == 0 and "no CUDA device: every GPU check skipped" in result.stdout


@pytest.mark.slow
def test_on_the_cpu_every_check_runs_and_a_failing_one_fails_the_script():
    result = check(*SMALL, "--steps", "1", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout.splitlines()[-1])
    assert [r["result"][:2] for r in rows] == ["ok"] * 5
    assert {r["check"].split(" step")[0] for r in rows[:3]} == {"tsm_mobilenet_v2"}
    assert all(r["clips_s"] > 0 for r in rows[:3])
    broken = check("--allow-cpu", "--arch", "no_such_arch", "--only-steps", "--json")
    assert broken.returncode == 1
    assert [r["result"] for r in json.loads(broken.stdout.splitlines()[-1])][:3] == ["FAILED"] * 3
