# landmarknet: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# torch is pinned to the CPU build first, so nothing pulls the multi-GB CUDA wheels.
TORCH  ?= torch==2.13.0

.PHONY: setup run test test-fast proto docs docs-check clean caffe-ref

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job: faces and 68 landmarks on the shipped sample pictures, written to out/.
run: setup
	$(VENV)/bin/landmarknet detect samples/ -o out/ --show-heatmaps
	$(VENV)/bin/landmarknet visualize heatmap4_68_bn -o out/heatmap4_68_bn.html

test: setup
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The reference Caffe that the caffe_ref tests compare with (brocolli-caffe 9.0.2, an SSD fork,
# built with CMake, CPU only; about 12 minutes on two cores; a second call does nothing).
# Tests find it through LANDMARKNET_CAFFE_REF, or in .caffe-ref when that is unset.
CAFFE_REF_HOME ?= .caffe-ref

caffe-ref:
	bash tools/caffe_ref/build.sh "$(CAFFE_REF_HOME)"

# Regenerate the protobuf module from our schema (needs grpcio-tools: pip install -e .[dev]).
proto: setup
	$(PY) -m pip install --quiet "grpcio-tools>=1.60"
	cd landmarknet/caffe && ../../$(PY) -m grpc_tools.protoc -I. --python_out=. caffe.proto

# Every generated document (docs/layers.md, docs/networks.md and prototxt/, docs/bad_inputs.md,
# the zoo table of docs/caffe_compat.md when the reference Caffe is built); `make docs-check`
# only checks (what tests/test_docs.py runs).
docs: setup
	$(PY) tools/gen_docs.py

docs-check: setup
	$(PY) tools/gen_docs.py --check

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache
