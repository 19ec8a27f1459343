"""Helpers of the scale benchmarks: each step in a fresh process, with its own peak RSS."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {memory:.0f} GiB RAM"


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    return float("nan")


def run_step(script: str, step: str, argv: list[str]) -> dict:
    """Run ``script --step STEP ARGV...`` in a new Python; return its last stdout line's JSON."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, script, "--step", step, *argv], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"step {step} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.perf_counter() - started, 1)
    return result


def child(result: dict) -> None:
    """What a step's process prints: its result and its peak RSS, as one JSON line."""
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
