"""Batch runner: execute every notebook with papermill, collect figures and headline numbers.

``python -m egpt_sim.notebooks --out out/notebooks [--params params.yaml] [-p NAME VALUE ...]
[--only 03]`` writes, under ``--out``:

* ``<notebook>.ipynb`` — the executed copy (parameters injected by papermill);
* ``figures/<notebook stem>/*.png`` — the figures each notebook saves (its ``FIG_DIR``);
* ``index.md`` — status, run time, parameters, headline numbers (scrapbook scraps) and
  figures of every notebook.

Parameters: ``--params`` is a YAML file whose UPPER_CASE keys apply to every notebook that
declares them and whose other keys (a notebook prefix such as ``"03"`` or a full stem)
hold per-notebook overrides; ``-p NAME VALUE`` (or ``-p 03:NAME VALUE``) overrides on the
command line. Values are parsed as YAML (``20``, ``[1, 2]``, ``null``, ``trace``). A
parameter no notebook declares, a section matching no notebook, a per-notebook key the
notebook does not declare, and a missing or invalid params file are one-line errors (exit
2) before anything runs: a typo is never silently ignored. The exit status is 1 if any
notebook failed.

:func:`measure_stages` runs the ``measure`` CLI (tiny CPU presets by default) for
``01_stage_timing``'s ``RUN_MEASURE`` option, in a subprocess: ``egpt_sim`` never imports
torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"


# --------------------------------------------------------------------------- parameters


def parse_value(text: str) -> Any:
    """A command-line value as YAML: ``20`` -> int, ``[1, 2]`` -> list, ``null`` -> None."""
    return yaml.safe_load(text)


def load_params(path: str | Path | None) -> tuple[dict, dict]:
    """(common, per-notebook) parameters from a YAML file (see the module docstring).

    A missing/unreadable file or invalid YAML is a one-line ValueError naming the file.
    """
    if path is None:
        return {}, {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the params file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{path}: not valid YAML{at} ({getattr(exc, 'problem', None) or type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of parameters")
    common = {k: v for k, v in data.items() if str(k).isupper()}
    per = {}
    for k, v in data.items():
        if str(k).isupper():
            continue
        if not isinstance(v, dict):
            raise ValueError(f"{path}: section {k!r} must map parameter names to values")
        per[str(k)] = dict(v)
    return common, per


def cli_params(pairs: Iterable[Sequence[str]]) -> tuple[dict, dict]:
    """``-p NAME VALUE`` (all notebooks) and ``-p 03:NAME VALUE`` (one notebook)."""
    common: dict = {}
    per: dict = {}
    for name, value in pairs:
        if ":" in name:
            nb, key = name.split(":", 1)
            per.setdefault(nb, {})[key] = parse_value(value)
        else:
            common[name] = parse_value(value)
    return common, per


def _matches(key: str, stem: str) -> bool:
    return stem == key or stem.startswith(f"{key}_")


def declared_parameters(notebook: Path) -> dict:
    import papermill as pm

    return pm.inspect_notebook(str(notebook))


def check_parameters(notebooks: Sequence[Path], common: dict, per: dict, origin: str = "parameters") -> None:
    """Fail fast (one-line ValueError) on a parameter no notebook would receive: a common
    NAME that no notebook in ``notebooks`` declares, a section matching no notebook, or a
    section key that a notebook it matches does not declare. ``origin`` names the source."""
    declared = {nb.stem: set(declared_parameters(nb)) for nb in notebooks}
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(set(common) - known)
    if unknown:
        raise ValueError(f"{origin}: no notebook declares {', '.join(unknown)}{_did_you_mean(unknown, known)}")
    for key, values in per.items():
        stems = [stem for stem in declared if _matches(key, stem)]
        if not stems:
            raise ValueError(f"{origin}: section {key!r} matches no notebook; notebooks: {sorted(declared)}")
        for stem in stems:
            bad = sorted(set(values) - declared[stem])
            if bad:
                raise ValueError(f"{origin}: {stem} declares no {', '.join(bad)}{_did_you_mean(bad, declared[stem])}")


def _did_you_mean(names: Sequence[str], known: set) -> str:
    """`` (did you mean X?)`` for the closest known name, else the known names."""
    import difflib

    close = [m for n in names for m in difflib.get_close_matches(n, sorted(known), n=1)]
    return f" (did you mean {', '.join(close)}?)" if close else f"; declared: {', '.join(sorted(known))}"


def parameters_for(notebook: Path, common: dict, per: dict) -> dict:
    """Parameters injected into ``notebook``: common ones it declares, then its sections."""
    declared = declared_parameters(notebook)
    out = {k: v for k, v in common.items() if k in declared}
    for key, values in per.items():
        if _matches(key, notebook.stem):
            unknown = sorted(set(values) - set(declared))
            if unknown:
                raise ValueError(f"{notebook.name}: no parameter(s) {unknown}; it declares {sorted(declared)}")
            out.update(values)
    return out


# --------------------------------------------------------------------------- running


@dataclass
class NotebookRun:
    """Outcome of one executed notebook."""

    name: str
    output: Path
    ok: bool
    seconds: float
    parameters: dict
    figures: list[Path] = field(default_factory=list)
    scraps: dict = field(default_factory=dict)
    error: str = ""


def discover(notebook_dir: str | Path = NOTEBOOK_DIR, only: Sequence[str] = ()) -> list[Path]:
    """Notebooks in ``notebook_dir`` (sorted); ``only`` keeps those matching a prefix/stem."""
    found = sorted(Path(notebook_dir).glob("*.ipynb"))
    if only:
        found = [p for p in found if any(_matches(k, p.stem) for k in only)]
        if not found:
            raise ValueError(f"--only {list(only)} matches no notebook in {notebook_dir}")
    if not found:
        raise ValueError(f"{notebook_dir}: no notebooks found")
    return found


@contextlib.contextmanager
def _importable_root():
    """Let the kernel import egpt_sim from this checkout even when it is not installed."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([old] if old else [])])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def run_notebook(notebook: Path, out_dir: str | Path, parameters: dict | None = None, kernel: str = "python3",
                 timeout_s: int = 1800) -> NotebookRun:
    """Execute one notebook into ``out_dir`` (figures into ``out_dir/figures/<stem>``)."""
    import papermill as pm
    import scrapbook as sb

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {})
    fig_dir = out_dir / "figures" / notebook.stem
    if "FIG_DIR" in declared_parameters(notebook):
        params.setdefault("FIG_DIR", str(fig_dir))
    output = out_dir / notebook.name
    t0 = time.perf_counter()
    error = ""
    with _importable_root():
        try:
            pm.execute_notebook(str(notebook), str(output), parameters=params, kernel_name=kernel, progress_bar=False,
                                cwd=str(out_dir), execution_timeout=timeout_s)
        except pm.PapermillExecutionError as exc:
            error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    seconds = time.perf_counter() - t0
    scraps = {}
    if output.exists():
        scraps = {name: scrap.data for name, scrap in sb.read_notebook(str(output)).scraps.items()}
    figures = sorted(Path(params.get("FIG_DIR", fig_dir)).glob("*.png"))
    return NotebookRun(notebook.stem, output, not error, seconds, params, figures, scraps, error)


def run_all(out_dir: str | Path, only: Sequence[str] = (), common: dict | None = None, per: dict | None = None,
            kernel: str = "python3", notebook_dir: str | Path = NOTEBOOK_DIR, progress: bool = True) -> list[NotebookRun]:
    """Run the selected notebooks and write ``out_dir/index.md``; returns one record each."""
    notebooks = discover(notebook_dir, only)
    plans = [(nb, parameters_for(nb, common or {}, per or {})) for nb in notebooks]  # fail fast on typos
    runs = []
    for nb, params in plans:
        if progress:
            print(f"running {nb.name} ...", flush=True)
        run = run_notebook(nb, out_dir, params, kernel)
        if progress:
            print(f"  {'ok' if run.ok else 'FAILED'} in {run.seconds:.1f} s{'  ' + run.error if run.error else ''}", flush=True)
        runs.append(run)
    write_index(runs, out_dir)
    return runs


def _short(value: Any) -> str:
    """One markdown table cell (pipes escaped; long lists/dicts summarised by their size)."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, dict)):
        text = str(value)
        text = text if len(text) <= 80 else f"{len(value)} {'rows' if isinstance(value, list) else 'entries'}"
    else:
        text = str(value)
    return text.replace("|", "\\|")


def _scrap_rows(scraps: dict) -> list[str]:
    """Index rows; a flat dict of scalars (e.g. headline numbers) gets one row per entry."""
    rows = []
    for k, v in scraps.items():
        if isinstance(v, dict) and 0 < len(v) <= 24 and all(not isinstance(x, (dict, list)) for x in v.values()):
            rows += [f"| {k}.{kk} | {_short(vv)} |" for kk, vv in v.items()]
        else:
            rows.append(f"| {k} | {_short(v)} |")
    return rows


def write_index(runs: list[NotebookRun], out_dir: str | Path) -> Path:
    """Markdown index linking every executed notebook, its figures and headline numbers."""
    out = Path(out_dir).resolve()
    lines = ["# Notebook run", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `python -m egpt_sim.notebooks`.", "",
             "| notebook | status | seconds | figures |", "|---|---|---|---|"]
    for r in runs:
        lines.append(f"| [{r.name}]({r.output.name}) | {'ok' if r.ok else 'FAILED'} | {r.seconds:.1f} | {len(r.figures)} |")
    for r in runs:
        lines += ["", f"## {r.name}", ""]
        if r.error:
            lines += [f"**Failed:** `{r.error}`", ""]
        if r.parameters:
            lines += ["Parameters: " + ", ".join(f"`{k}={v!r}`" for k, v in sorted(r.parameters.items())), ""]
        if r.scraps:
            lines += ["| headline | value |", "|---|---|"]
            lines += _scrap_rows(r.scraps)
            lines.append("")
        for f in r.figures:
            rel = os.path.relpath(f, out)
            lines += [f"![{f.stem}]({rel})", ""]
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- measure


def measure_available() -> str | None:
    """None when ``python -m measure`` can run here, else the reason it cannot."""
    if importlib.util.find_spec("measure") is None and not (ROOT / "measure" / "cli.py").exists():
        return "the measure package is not in this checkout"
    for mod in ("torch", "transformers"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (measure needs it)"
    return None


def measure_stages(out_dir: str | Path, target: str = "random:tiny", drafter: str = "random:tiny",
                   device: str = "auto", n_samples: int = 2, decode_steps: int = 4, gammas: Sequence[int] = (1, 2, 4, 8),
                   placements: Sequence[str] = ("alone", "shared_gpu"), fallback: Any = None,
                   timeout_s: int = 3600) -> Any:
    """Measure stage timings with ``python -m measure`` into ``out_dir/traces``; return that folder.

    A synthetic dataset is generated first (``measure synth-data``). ``device="auto"``
    picks ``cuda:0`` (fp16) when ``nvidia-smi`` is present, else ``cpu`` (fp32). When
    ``measure`` cannot run here (no torch, package missing), prints why and returns
    ``fallback`` instead. A failing measurement raises RuntimeError with its stderr tail.
    """
    why = measure_available()
    if why:
        print(f"measure skipped: {why}; using {fallback!r} instead")
        return fallback
    out = Path(out_dir).resolve()
    if device == "auto":
        device = "cuda:0" if shutil.which("nvidia-smi") else "cpu"
    dtype = "fp32" if device == "cpu" else "fp16"
    data, traces = out / "data", out / "traces"
    if traces.exists():
        shutil.rmtree(traces)
    commands = [
        ["synth-data", "--out", str(data), "--n", str(n_samples)],
        ["stages", "--target", target, "--drafter", drafter, "--dataset", str(data), "--out", str(traces),
         "--n-samples", str(n_samples), "--device", device, "--dtype", dtype, "--decode-steps", str(decode_steps),
         "--gammas", ",".join(map(str, gammas)), "--placement", ",".join(placements), "--no-progress"],
    ]
    with _importable_root():
        for args in commands:
            cmd = [sys.executable, "-m", "measure", *args]
            print("$ " + " ".join(cmd), flush=True)
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
            print(p.stdout[-4000:])
            if p.returncode != 0:
                raise RuntimeError(f"measure {args[0]} failed (exit {p.returncode}): {p.stderr.strip()[-1500:]}")
    return traces


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    from ..cli import OneLineParser

    p = OneLineParser(prog="python -m egpt_sim.notebooks", description="Run every notebook with papermill.")
    p.add_argument("--out", required=True, help="output folder (executed notebooks, figures/, index.md)")
    p.add_argument("--params", default=None, help="YAML: UPPER_CASE keys for all notebooks, sections per notebook")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a parameter (YAML value); NAME or 03:NAME for one notebook")
    p.add_argument("--only", action="append", default=[], help="run only notebooks with this prefix/stem (repeatable)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    p.add_argument("--notebooks-dir", default=str(NOTEBOOK_DIR), help="folder holding the notebooks")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        common, per = load_params(a.params)
        c2, p2 = cli_params(a.parameter)
        every = discover(a.notebooks_dir)  # typos are checked against every notebook, not only --only ones
        check_parameters(every, common, per, origin=str(a.params))
        check_parameters(every, c2, p2, origin="-p")
        common |= c2
        for k, v in p2.items():
            per.setdefault(k, {}).update(v)
        runs = run_all(a.out, a.only, common, per, a.kernel, a.notebooks_dir)
    except ValueError as exc:
        print(f"egpt_sim.notebooks: error: {exc}", file=sys.stderr)
        return 2
    failed = [r.name for r in runs if not r.ok]
    print(f"wrote {Path(a.out) / 'index.md'}; {len(runs) - len(failed)} ok, {len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
