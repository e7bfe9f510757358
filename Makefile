# egpt-sim: two entry points (see README). Each target sets up its own virtualenv.
PYTHON ?= python3
SIM_VENV ?= .venv-sim
TEST_VENV ?= .venv
TORCH_CPU ?= torch==2.13.0
OUT ?= out

.PHONY: demo test test-fast notebooks lab bench clean

$(SIM_VENV)/.ok: pyproject.toml
	$(PYTHON) -m venv $(SIM_VENV)
	$(SIM_VENV)/bin/pip install -q -e .
	touch $@

# Simulator only (no torch): prediction table + Gantt figure from the bundled traces.
demo: $(SIM_VENV)/.ok
	$(SIM_VENV)/bin/egpt-sim traces
	$(SIM_VENV)/bin/egpt-sim predict --gpus 1 --acceptance 0.6
	$(SIM_VENV)/bin/egpt-sim predict --gpus 2 --acceptance 0.6
	$(SIM_VENV)/bin/egpt-sim predict --traces h100/validation --gpus 1 --acceptance trace --acceptance-run acc-sigma0.03 --output-tokens 50
	$(SIM_VENV)/bin/egpt-sim timeline --gpus 1 --acceptance 0.6 --out $(OUT)/timeline_1gpu.png

# Everything (CPU torch first, so pip never pulls a multi-GB CUDA build).
$(TEST_VENV)/.ok: pyproject.toml
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install -q $(TORCH_CPU)
	$(TEST_VENV)/bin/pip install -q -e ".[measure,notebooks,dist,test]"
	touch $@

test: $(TEST_VENV)/.ok
	$(TEST_VENV)/bin/python -m pytest -q

test-fast: $(TEST_VENV)/.ok
	$(TEST_VENV)/bin/python -m pytest -q -m "not notebooks"

notebooks: $(TEST_VENV)/.ok
	$(TEST_VENV)/bin/python -m egpt_sim.notebooks --out $(OUT)/notebooks

lab: $(TEST_VENV)/.ok
	$(TEST_VENV)/bin/jupyter lab --allow-root notebooks/

bench: $(TEST_VENV)/.ok
	$(TEST_VENV)/bin/python benchmarks/bench_sweep.py

clean:
	rm -rf $(SIM_VENV) $(TEST_VENV) $(OUT)
