"""Run a command on one GPU of this machine: pick a free GPU slot, set CUDA_VISIBLE_DEVICES, exec the command.

Snakemake's `resources: gpu=1` only limits how many GPU jobs run at once (and only with `--resources gpu=N`);
it does not tell a job WHICH GPU to use. This wrapper does: it takes an exclusive lock on
`<lock-dir>/gpu<ID>.<slot>.lock` for the first free slot, exports CUDA_VISIBLE_DEVICES=<ID> and replaces itself
with the command (the lock is held by the inherited file descriptor until the command exits, even if it is
killed). With `--per-gpu K`, K jobs share each GPU. When every slot is busy it waits.

It does nothing (runs the command as is) when:
  - no GPU is visible (no CUDA_VISIBLE_DEVICES list and no `nvidia-smi -L` output): CPU runs, enf picks the CPU;
  - SLURM has assigned GPUs to the job (SLURM_JOB_ID and CUDA_VISIBLE_DEVICES both set);
  - ENF_GPU_SLOT=off is in the environment.
Usage: gpu_slot.py --lock-dir DIR [--per-gpu K] -- COMMAND [ARGS...]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def visible_gpus(env: dict[str, str]) -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else the ones `nvidia-smi -L` lists."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def acquire(lock_dir: Path, gpus: list[str], per_gpu: int, poll: float = 2.0) -> tuple[int, str]:
    """Lock the first free (gpu, slot); return (file descriptor, gpu id). Waits while all are busy."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for slot in range(per_gpu):
            for gpu in gpus:
                fd = os.open(lock_dir / f"gpu{gpu}.{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd, gpu
        if not waited:
            print(f"[gpu_slot] all {len(gpus) * per_gpu} GPU slots busy; waiting (limit GPU jobs with "
                  f"--resources gpu={len(gpus) * per_gpu})", file=sys.stderr, flush=True)
            waited = True
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, choose a GPU, exec the command."""
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: gpu_slot.py --lock-dir DIR [--per-gpu K] -- COMMAND [ARGS...]")
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lock-dir", required=True)
    parser.add_argument("--per-gpu", type=int, default=int(os.environ.get("ENF_JOBS_PER_GPU", "1")))
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        raise SystemExit("gpu_slot.py: no command after --")
    env = dict(os.environ)
    assigned_by_slurm = "SLURM_JOB_ID" in env and env.get("CUDA_VISIBLE_DEVICES")
    gpus = [] if env.get("ENF_GPU_SLOT") == "off" or assigned_by_slurm else visible_gpus(env)
    if gpus:
        fd, gpu = acquire(Path(args.lock_dir), gpus, max(args.per_gpu, 1))
        os.set_inheritable(fd, True)
        env["CUDA_VISIBLE_DEVICES"] = gpu
        print(f"[gpu_slot] CUDA_VISIBLE_DEVICES={gpu}", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
