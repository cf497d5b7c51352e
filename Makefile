# Quick start: `make demo` (train on the embedded digits data) and `make test`.
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed first at versions this machine class carries; override on other
# hosts, e.g. `make TORCH_SPEC="torch torchvision" test`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test bench gpu-check clean

$(VENV)/.installed: pyproject.toml Makefile
	@echo "Setting up $(VENV) (first run only; PyTorch is large, this takes a few minutes)..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq $(TORCH_SPEC)
	$(PY) -m pip install -qq -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m domainbed.scripts.demo --output_dir demo_output

test: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) -m pip install -qq -e '.[bench]'
	$(PY) benchmarks/bench_moe_layer.py
	$(PY) benchmarks/bench_vs_mixture_of_experts.py
	$(PY) benchmarks/bench_gmoe_step.py
	$(PY) benchmarks/bench_averaging.py
	$(PY) benchmarks/reproducibility.py

# The prepared GPU check (benchmarks/gpu/check.py): on the GPU machine, with its own python3 and no
# install, `PYTHONPATH=. python3 benchmarks/gpu/check.py --out DIR`; here, the same with the venv.
GPU_CHECK_OUT ?= gpu_check_output
gpu-check: venv
	PYTHONPATH=. $(PY) benchmarks/gpu/check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) demo_output
