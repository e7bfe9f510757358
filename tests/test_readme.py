"""Every command the README and the Makefile's demo document runs green.

The README's ```bash blocks are parsed; each ``egpt-sim ...`` / ``python -m egpt_sim...``
line is run as written, in a subprocess from the repository root, with CPU-cheap options
appended (fewer simulated requests; later options win in argparse) and ``--out`` moved
under a temporary folder. Lines that cannot run here are skipped *by rule*, each rule
with its reason; a README line matching no rule fails, so a new headline command is
either run or explicitly excused.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SKIP_RULES = [  # (prefix, reason): checked in order
    ("make lab", "starts an interactive JupyterLab server"),
    ("make ", "make targets build virtualenvs with pip (network, minutes); `make demo`'s recipe lines are run by "
              "test_makefile_demo_lines_run, `make notebooks` by test_every_notebook_runs_with_its_defaults"),
    ("python -m measure", "measure needs torch + transformers and, at the documented sizes, a GPU; "
                          "tests/test_measure_*.py run it with tiny CPU presets"),
    ("bash scripts/", "GPU measurement scripts (an H100 for minutes)"),
    ("python benchmarks/", "benchmarks print measured ratios from one run (minutes); run by hand"),
]
CHEAP = {  # options appended per command (same option twice: argparse keeps the last)
    "predict": ["--requests", "5"],
    "timeline": ["--requests", "1"],
    "sweep": ["--requests", "5", "--no-progress"],
    "plan": ["--requests", "5"],
    "traces": [],
    "egpt_sim.report": ["--requests", "5"],
    "egpt_sim.validation": ["--predicted", "20"],
    "egpt_sim.notebooks": ["-p", "N_REQUESTS", "5", "-p", "03:N_REQUESTS", "5", "-p", "03:SERVING_REQUESTS", "10", "-p", "03:SERVING_RATES_RPS",
                           "[0.5]", "-p", "03:OUTPUT_TOKENS", "[10, 50]"],
}
WRITES_BESIDE_INPUT = {"egpt_sim.validation"}  # default --out is the (tracked) input folder: always redirect


def bash_lines(text: str) -> list[str]:
    """Command lines of every ```bash block: continuations joined, comments and blanks dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


def classify(line: str) -> tuple[str, str]:
    """('skip', reason) | ('run', key of CHEAP) | ('unknown', line)."""
    for prefix, reason in SKIP_RULES:
        if line.startswith(prefix):
            return "skip", reason
    words = shlex.split(line)
    if words[0] == "egpt-sim":
        return "run", words[1]
    if words[:2] == ["python", "-m"] and words[2].startswith("egpt_sim"):
        return "run", words[2]
    return "unknown", line


def command(line: str, key: str, tmp: Path) -> list[str]:
    """The argv that runs ``line`` here: this interpreter, cheap options, outputs under ``tmp``."""
    words = shlex.split(line)
    argv = [sys.executable, "-m", "egpt_sim", *words[1:]] if words[0] == "egpt-sim" else [sys.executable, *words[1:]]
    if "..." in argv:
        raise AssertionError(f"README line elides arguments and cannot run: {line}")
    for i, w in enumerate(argv[:-1]):
        if w == "--out":
            argv[i + 1] = str(tmp / Path(argv[i + 1]).name)
    if key in WRITES_BESIDE_INPUT and "--out" not in argv:
        argv += ["--out", str(tmp / "out")]
    return argv + CHEAP[key]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), MPLBACKEND="Agg")
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)


README_LINES = bash_lines((ROOT / "README.md").read_text())


def test_readme_commands_are_all_classified():
    assert len(README_LINES) >= 10
    unknown = [line for line in README_LINES if classify(line)[0] == "unknown"]
    assert not unknown, f"README commands no rule covers (run or skip them in tests/test_readme.py): {unknown}"
    keys = {classify(line)[1] for line in README_LINES if classify(line)[0] == "run"}
    assert keys <= set(CHEAP), keys - set(CHEAP)
    assert {"predict", "sweep", "timeline", "plan", "traces", "egpt_sim.report"} <= keys


def test_console_script_is_the_cli_the_tests_run():
    assert 'egpt-sim = "egpt_sim.cli:main"' in (ROOT / "pyproject.toml").read_text()


def _params(kind: str):
    out = []
    for line in README_LINES:
        what, key = classify(line)
        if what == kind:
            marks = [pytest.mark.notebooks] if key == "egpt_sim.notebooks" else []
            out.append(pytest.param(line, key, marks=marks, id=line[:60]))
    return out


@pytest.mark.parametrize("line, key", _params("run"))
def test_readme_command_runs(line, key, tmp_path):
    p = run(command(line, key, tmp_path))
    assert p.returncode == 0, f"{line}\n--- stderr ---\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr and p.stdout.strip()
    for w in re.findall(r"^wrote (?:\d+ scenarios to )?(\S+)", p.stdout, flags=re.M):  # each file it names exists
        assert Path(w.rstrip(";")).exists() or (ROOT / w.rstrip(";")).exists(), (line, w)


@pytest.mark.parametrize("line, reason", [pytest.param(ln, classify(ln)[1], id=ln[:60]) for ln in README_LINES
                                          if classify(ln)[0] == "skip"])
def test_readme_command_skipped_with_reason(line, reason):
    pytest.skip(f"{reason}: {line}")


def makefile_recipe(target: str) -> list[str]:
    """Recipe lines of ``target`` in the Makefile (tab-indented lines after ``target:``)."""
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert m, f"Makefile has no target {target}"
    return [ln.strip() for ln in m.group(1).splitlines()]


def test_makefile_demo_lines_run(tmp_path):
    lines = makefile_recipe("demo")
    assert lines and all(ln.startswith("$(SIM_VENV)/bin/egpt-sim ") for ln in lines), lines
    for ln in lines:
        readme_like = ln.replace("$(SIM_VENV)/bin/", "").replace("$(OUT)", "out")
        p = run(command(readme_like, classify(readme_like)[1], tmp_path))
        assert p.returncode == 0, f"{ln}\n{p.stderr[-3000:]}"


@pytest.mark.notebooks
def test_every_notebook_runs_with_its_defaults(tmp_path):
    """``make notebooks`` (no params file): every notebook's defaults work; only sizes are cut."""
    assert makefile_recipe("notebooks") == ["$(TEST_VENV)/bin/python -m egpt_sim.notebooks --out $(OUT)/notebooks"]
    sizes = ["-p", "N_REQUESTS", "5", "-p", "03:SERVING_REQUESTS", "10", "-p", "03:SERVING_RATES_RPS", "[0.5]",
             "-p", "03:OUTPUT_TOKENS", "[10, 50]", "-p", "03:ACCEPTANCE", "[0.0, 1.0]", "-p", "04:TOL", "0.05",
             "-p", "04:PLAN_OUTPUT_TOKENS", "[20]", "-p", "05:N_PREDICTED", "20"]
    p = run([sys.executable, "-m", "egpt_sim.notebooks", "--out", str(tmp_path / "nb"), *sizes])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "6 ok, 0 failed" in p.stdout
