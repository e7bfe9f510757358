"""Run metadata: what ran, where, with which software, and how it was timed.

Every key of ``egpt_sim.schema.RUN_METADATA_KEYS`` is filled (``source`` is always
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


def git_info(repo_dir: str | Path | None = None) -> tuple[str, bool | str]:
    """(commit, dirty) of the repository holding ``repo_dir``; ("unknown", "unknown") if none."""
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
