"""Which device an enf command runs on, and a refusal instead of a silent CPU run when a GPU was asked for.

`auto` means CUDA when torch can use it, else the CPU; but a process that was given a GPU (CUDA_VISIBLE_DEVICES
naming one, or SLURM's SLURM_JOB_GPUS / SLURM_STEP_GPUS / SLURM_GPUS_ON_NODE) and cannot use it (a CPU-only torch,
or no device visible to torch) stops at once with one line: a SLURM job that asked for a GPU must not spend its days
on the CPU. ENF_ALLOW_CPU=1 in the environment, or an explicit `cpu` device, runs on the CPU anyway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from enf.errors import EnfError

#: Environment variables through which a job is given GPUs (CUDA's own, and SLURM's for --gpus / --gres).
GPU_LIST_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
GPU_COUNT_VAR = "SLURM_GPUS_ON_NODE"
#: Values that hide every GPU (CUDA stops at the first invalid entry; old SLURM writes NoDevFiles for none).
NO_GPU = ("", "-1", "none", "nodevfiles")
#: Set to 1 (or true/yes) to run `auto` on the CPU even where a GPU was given but cannot be used.
ALLOW_CPU = "ENF_ALLOW_CPU"


def gpu_request(env: Mapping[str, str] | None = None) -> str | None:
    """The environment setting that gives this process a GPU (e.g. 'CUDA_VISIBLE_DEVICES=0'), or None."""
    env = os.environ if env is None else env
    for var in GPU_LIST_VARS:
        value = env.get(var, "").strip()
        if value.split(",")[0].strip().lower() not in NO_GPU:
            return f"{var}={value}"
    count = env.get(GPU_COUNT_VAR, "").strip()
    if count.isdigit() and int(count) > 0:
        return f"{GPU_COUNT_VAR}={count}"
    return None


def cpu_allowed(env: Mapping[str, str] | None = None) -> bool:
    """True when ENF_ALLOW_CPU says a GPU that was given but is unusable may be left for the CPU."""
    env = os.environ if env is None else env
    return env.get(ALLOW_CPU, "").strip().lower() in ("1", "true", "yes")


def cuda_problem() -> str | None:
    """Why this torch cannot run on CUDA here, in words that say what to do; None when it can."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build: build the GPU environment with "
                "`scripts/setup-env.sh gpu` and run enf (or the workflow) from it")
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use CUDA here: no GPU visible to this "
            "process, or an NVIDIA driver that is missing or too old for this build")


def choose_device(name: str, setting: str = "device",
                  env: Mapping[str, str] | None = None) -> tuple[torch.device, str]:
    """The device for `name` (auto, cpu, mps, cuda, cuda:N) and why, for the log; refuses an unusable GPU.

    `setting` names where `name` came from (train.device, --device) in messages.
    """
    if name == "auto":
        asked = gpu_request(env)
        problem = cuda_problem()
        if problem is None:
            return torch.device("cuda"), f"auto: CUDA available{f', {asked}' if asked else ''}"
        if asked is None:
            return torch.device("cpu"), "auto: no GPU requested or visible"
        if not cpu_allowed(env):
            raise EnfError(f"a GPU was requested ({asked}) but {problem}; to run on the CPU anyway set "
                           f"{ALLOW_CPU}=1 or pass --device cpu")
        return torch.device("cpu"), f"auto: a GPU was requested ({asked}) but is unusable; {ALLOW_CPU}=1"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EnfError(f"{setting} {name!r} is not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        problem = cuda_problem()
        if problem is not None:
            raise EnfError(f"{setting} is {name!r} but {problem}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise EnfError(f"{setting} is {name!r} but torch sees {count} GPU(s) (cuda:0..cuda:{count - 1})")
    asked = gpu_request(env) if device.type == "cpu" else None
    return device, f"{setting} {name}" + (f" (the GPU of {asked} stays unused)" if asked else "")


def pick_device(name: str, setting: str = "device", env: Mapping[str, str] | None = None) -> torch.device:
    """The device of `choose_device`, without the reason."""
    return choose_device(name, setting, env)[0]
