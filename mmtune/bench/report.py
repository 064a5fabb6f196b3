"""Shared benchmark helpers: one timing loop, the device's peak FLOP/s, and JSON output.

    seconds, out = timed(lambda: model(x), "cuda")          # one call, the device synchronized
    seconds, out = best_time(lambda: model(x), repeats=3, device="cpu")
    times = best_times({"padded": f, "varlen": g}, repeats=3, device="cpu")  # f, g in turn
    write_json(result, "bench.json")
    result = run_child("mmtune.bench.long", {"length": 1024})  # `python -m MODULE ARGS` in a fresh process
"""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from mmtune.config import ConfigError

# dense bf16 tensor-core peak of each card, FLOP/s; the first name contained in the device name wins
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (HBM3)
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> tuple[float, object]:
    """Wall time (s) of one call of `fn`, with the device's queued work finished before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def best_time(fn, repeats: int, device, warmup: int = 1) -> tuple[float, object]:
    """Best wall time (s) of `repeats` calls after `warmup` untimed ones, and the last result."""
    return best_times({"fn": fn}, repeats, device, warmup)["fn"]


def best_times(fns: dict, repeats: int, device, warmup: int = 1) -> dict:
    """{name: (best wall time in s, last result)}: the functions run in turn, `repeats` rounds after
    `warmup` untimed ones, so a busy spell of the machine slows all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {name: (float("inf"), None) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, result = timed(fn, device)
            best[name] = (min(best[name][0], seconds), result)
    return best


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` CPU threads (None: leave as is). One thread keeps timings steady on a
    machine that other jobs keep busy (OpenMP threads that wait on each other there lose whole slices)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_device(device) -> None:
    """Raise ConfigError, before any model is built, when `device` is not one torch can use here."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"--device {device}: {e}; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch {torch.__version__} sees no CUDA device on this machine; "
                          f"run on a GPU with a CUDA build of torch, or leave --device out (cpu)")


def machine() -> dict:
    """What the figures were measured on: CPU threads in use and the load average (other jobs)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average_1min": load,
            "torch": torch.__version__}


def peak_flops(device, peak_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of the card: `peak_tflops` if given, else from the table, else None."""
    if peak_tflops is not None:
        return float(peak_tflops) * 1e12
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def write_json(result: dict, path: str | Path | None) -> str:
    """The result as indented JSON text, also written to `path` when given."""
    text = json.dumps(result, indent=2)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    return text


def run_child(module: str, args: dict) -> dict:
    """Run `python -m module JSON_ARGS` in a fresh process; its last line of stdout is the JSON result."""
    done = subprocess.run([sys.executable, "-m", module, json.dumps(args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench child {module} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def status_kb(pid: int | str = "self", key: str = "VmRSS") -> int:
    """A kB figure of /proc/PID/status (VmRSS, VmHWM, ...); 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_of(fn, device: str) -> tuple[float, float]:
    """(seconds, peak bytes above the memory in use before) of one call of fn: on the CPU the kernel's
    high-water mark (VmHWM, reset first), on CUDA max_memory_allocated."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = status_kb("self", "VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else status_kb("self", "VmHWM") * 1024
    return seconds, peak - base


def measure_steps(model, optimizer, batch: dict, steps: int, device: str, base: float,
                  after_backward=None) -> tuple[float, float, float]:
    """One warm-up training step on `batch` (the optimizer's state exists from then on), then `steps` timed ones:
    -> (bytes resident above `base` after the warm-up, seconds of the timed steps, their peak bytes above that).
    after_backward(): what the loop does between backward and the optimizer step (HFT drops the frozen half)."""
    def step():
        model(**batch).loss_sum.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    cuda = torch.device(device).type == "cuda"
    resident = (torch.cuda.memory_allocated() if cuda else status_kb("self", "VmRSS") * 1024) - base
    seconds, peak = peak_of(lambda: [step() for _ in range(steps)], device)
    return resident, seconds, peak
