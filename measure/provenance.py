"""Run metadata: what ran, where, with which software, and how it was timed.

Every key of ``egpt_sim.traces.schema.RUN_METADATA_KEYS`` is filled (``source`` is always
``"measured"``); unknown values are the string ``"unknown"``, never guessed.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterable

import torch

from measure.writer import schema

_PACKAGES = ("torch", "transformers", "accelerate", "bitsandbytes", "tokenizers", "av", "cv2",
             "numpy", "pandas", "pyarrow")


def versions() -> dict[str, str]:
    """Installed versions of the packages that affect timings ("absent" when not importable)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except Exception:  # noqa: BLE001 - a broken optional install is "absent" too
            out[name] = "absent"
    out["cuda_runtime"] = str(torch.version.cuda) if torch.version.cuda else "none"
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    return out


COMMIT_ENV = "EGPT_GIT_COMMIT"
COMMIT_FILE = Path(__file__).resolve().parent.parent / ".git_commit"  # written by scripts/stamp_commit.sh


def git_info(repo_dir: str | Path | None = None) -> tuple[str, bool | str]:
    """(commit, dirty) of the repository holding ``repo_dir``; ("unknown", "unknown") if none.

    Where ``.git`` is absent (the GPU machine gets a copy of the working tree), the commit is
    read from ``$EGPT_GIT_COMMIT`` or the ``.git_commit`` file that ``scripts/stamp_commit.sh``
    writes before a GPU run ("<hash> dirty|clean").
    """
    import os

    stamped = os.environ.get(COMMIT_ENV) or (COMMIT_FILE.read_text().strip() if COMMIT_FILE.exists() else "")
    if stamped:
        commit, _, state = stamped.partition(" ")
        return commit, (state == "dirty") if state in ("dirty", "clean") else "unknown"
    cwd = str(repo_dir or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return commit or "unknown", bool(status.strip())
    except Exception:  # noqa: BLE001 - not a repo, no git, no commits yet
        return "unknown", "unknown"


def gpu_info(devices: Iterable[str | torch.device]) -> dict[str, Any]:
    """Names of the GPUs used (or "cpu"), driver version (nvidia-smi) and CUDA runtime."""
    devs = [torch.device(d) for d in devices]
    names = []
    for d in devs:
        if d.type == "cuda":
            idx = d.index if d.index is not None else torch.cuda.current_device()
            names.append(torch.cuda.get_device_name(idx))
        else:
            names.append(f"cpu ({platform.processor() or platform.machine()})")
    driver = "unknown"
    if any(d.type == "cuda" for d in devs):
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20,
                                    check=True).stdout.splitlines()[0].strip()
        except Exception:  # noqa: BLE001
            pass
    unique = list(dict.fromkeys(names))
    return {"gpu_name": unique[0] if len(unique) == 1 else " + ".join(unique),
            "devices": [str(d) for d in devs], "gpu_names": names,
            "driver_version": driver, "cuda_version": str(torch.version.cuda or "none")}


def host_info() -> dict[str, Any]:
    """CPU model and cores, torch threads, MPS state, GPU clocks and power limit (what shapes a
    host-bound decode step); unknown values are "unknown"."""
    import os

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except Exception:  # noqa: BLE001 - not Linux / no such line
        cpu = platform.processor() or "unknown"
    mps = "on" if os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or Path("/tmp/nvidia-mps").exists() else "off"
    return {"cpu_model": cpu, "cpu_cores_logical": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "unknown",
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
            "mps": mps, "gpu_clocks": _gpu_clocks()}


def _gpu_clocks() -> list[dict[str, str]] | str:
    """Per GPU: SM/memory clocks (current, max), power limit, persistence mode (nvidia-smi)."""
    if not torch.cuda.is_available():
        return "no cuda"
    fields = "index,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,persistence_mode,compute_mode"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except Exception:  # noqa: BLE001
        return "unknown"
    keys = fields.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.strip().splitlines()]


DRIFT_LIMIT = 0.05  # |first-quarter vs last-quarter median change| above this flags a run


def drift_check(df: Any, sample_order: list[str]) -> dict[str, Any]:
    """Median of the first vs the last quarter of samples (in measuring order), per (role, stage)
    for the GPU-bound prefill and the host-sensitive decode step: relative change, and a flag."""
    order = {s: i for i, s in enumerate(sample_order)}
    ok = df[(df["status"] == "ok") & df["stage"].isin(("prefill", "decode_step"))]
    ok = ok.assign(_i=ok["sample_id"].map(order)).dropna(subset=["_i"])
    ids = sorted(ok["_i"].unique())
    q = max(1, len(ids) // 4)
    if len(ids) < 4:
        return {"n_samples": len(ids), "flagged": False, "note": "fewer than 4 samples: not checked"}
    first, last = set(ids[:q]), set(ids[-q:])
    changes = {}
    for (role, stage), g in ok.groupby(["role", "stage"]):
        per = g.groupby("_i")["duration_ms"].median()
        a, b = per[per.index.isin(first)].median(), per[per.index.isin(last)].median()
        changes[f"{role}/{stage}"] = round(float(b / a - 1.0), 4) if a > 0 else None
    flagged = any(v is not None and abs(v) > DRIFT_LIMIT for v in changes.values())
    return {"n_samples": len(ids), "quarter": q, "change_last_vs_first": changes, "limit": DRIFT_LIMIT,
            "flagged": flagged}


def record_drift(out_dir: str | Path, run_id: str, sample_order: list[str]) -> dict[str, Any]:
    """:func:`drift_check` of one run of a trace folder, merged into its metadata."""
    df = schema.read_table(out_dir, schema.STAGE_TIMINGS_FILE)
    res = drift_check(df[df["run_id"] == run_id], sample_order)
    meta = schema.read_metadata(out_dir)["runs"][run_id]
    schema.write_metadata(out_dir, {run_id: {**meta, "drift": res}})
    return res


def run_metadata(*, model_info: dict[str, dict[str, Any]], devices: Iterable[str | torch.device],
                 dtype: str, quant: str | None, timing: dict[str, str], **settings: Any) -> dict[str, Any]:
    """Metadata of one measurement run.

    ``model_info`` maps role -> the pipeline's ``info`` (source, preset or checkpoint hashes,
    attention implementation, ...); ``timing`` says which method timed which stages;
    ``settings`` are the run's knobs (placement, concurrency, frames, decode steps, ...).
    """
    commit, dirty = git_info()
    meta: dict[str, Any] = {
        **gpu_info(devices),
        "dtype": dtype,
        "quantization": quant or "none",
        "versions": versions(),
        "git_commit": commit,
        "git_dirty": dirty,
        "source": "measured",
        "hostname": socket.gethostname(),
        "host": host_info(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "models": model_info,
        "attn_implementation": {r: i.get("attn_implementation") for r, i in model_info.items()},
        "timing_method": timing,
        **settings,
    }
    missing = [k for k in schema.RUN_METADATA_KEYS if k not in meta]
    if missing:  # a programming error, not a user error
        raise AssertionError(f"run metadata lacks required keys {missing}")
    return meta
