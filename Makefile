# landmarknet: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# torch is pinned to the CPU build first, so nothing pulls the multi-GB CUDA wheels.
TORCH  ?= torch==2.13.0

.PHONY: setup run test test-fast proto docs clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job: faces and 68 landmarks on the shipped sample pictures, written to out/.
run: setup
	$(VENV)/bin/landmarknet detect samples/ -o out/ --show-heatmaps
	$(VENV)/bin/landmarknet visualize weights/heatmap4_68_bn/deploy.prototxt -o out/heatmap4_68_bn.html

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Regenerate the protobuf module from our schema (needs grpcio-tools: pip install -e .[dev]).
proto: setup
	$(PY) -m pip install --quiet "grpcio-tools>=1.60"
	cd landmarknet/caffe && ../../$(PY) -m grpc_tools.protoc -I. --python_out=. caffe.proto

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache
