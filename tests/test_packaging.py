"""Packaging: environment.yml lists what pyproject lists; egpt_sim imports without torch."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch", "dask[distributed]": "dask"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;]", req, maxsplit=1)[0].strip().lower()


def test_environment_yml_lists_pyproject_dependencies():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in py["dependencies"]}
    for extra in ("measure", "notebooks", "dist", "test"):
        wanted |= {_name(r) for r in py["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    missing = {w for w in wanted if CONDA_NAMES.get(w, w) not in listed}
    assert not missing, f"environment.yml lacks {sorted(missing)}"
    extra = listed - {CONDA_NAMES.get(w, w) for w in wanted} - {"python", "pip", "distributed"}
    assert not extra, f"environment.yml lists packages pyproject does not: {sorted(extra)}"


def test_egpt_sim_runs_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import egpt_sim as E\n"
        "ts = E.load_traces('example/seed_calibrated')\n"
        "r = E.simulate(E.SimConfig(strategy='parallel_sd', n_requests=5), ts)\n"
        "assert r.summary()['n_requests'] == 5\n"
        "import egpt_sim.analysis.sweep, egpt_sim.analysis.planning, egpt_sim.cli, egpt_sim.analysis.plots\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme.split("\n## ")[0], "README must open with the test command"
    assert "make test" in ci
