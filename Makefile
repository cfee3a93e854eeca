# Quick start: `make demo` (set-up + the main job), `make test` (set-up + every CPU test).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)
DEMO := runs/demo

.PHONY: setup demo test test-fast bench learn gpu-check gpu-study clean ffmpeg fashion-mnist

setup: $(STAMP) ffmpeg fashion-mnist

$(STAMP): requirements.txt requirements-source.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77"
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-build-isolation $(TORCH_PIN) -r requirements-source.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# imageio-ffmpeg (pinned, in requirements.txt) always gives an ffmpeg binary; as root we also add Debian's
# ffmpeg for its shared libraries (torchcodec loads them) and ffprobe.
ffmpeg:
	@if ! command -v ffmpeg >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
		|| echo "apt-get could not install ffmpeg: using imageio-ffmpeg's binary only"; fi
	@$(BIN)/python -c "from vmae.shards.encode import ffmpeg_exe; print('ffmpeg:', ffmpeg_exe())"

# `vmae study`'s items: Debian's dataset-fashion-mnist package, installed when run as root (the study says what to
# install otherwise, or reads VMAE_FASHION_MNIST)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fashion-mnist:
	@if [ ! -f $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "apt-get could not install dataset-fashion-mnist: vmae study will say what to install"; fi

demo: setup
	$(BIN)/vmae synth $(DEMO)/videos --classes 24 --videos-per-class 2 --real-samples
	$(BIN)/vmae shards build $(DEMO)/videos $(DEMO)/shards --samples-per-shard 16
	$(BIN)/vmae shards verify $(DEMO)/shards
	$(BIN)/vmae shards inspect $(DEMO)/shards
	$(BIN)/vmae loader-check $(DEMO)/shards --sheet $(DEMO)/views.png --batches 4 --batch-size 4
	$(BIN)/vmae pretrain --config demo --dataset $(DEMO)/shards --out $(DEMO)/pretrain

test: setup
	$(BIN)/python -m pytest -q -ra --durations=30

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow"

bench: setup
	$(BIN)/python bench/bench_shards.py --repeats 5
	$(BIN)/python bench/bench_codecs.py --repeats 3
	$(BIN)/python bench/bench_loader.py --repeats 3
	$(BIN)/python bench/bench_model.py --preset vit-b --batch 2
	$(BIN)/python bench/bench_pretrain.py --preset vit-s --repeats 3
	$(BIN)/python bench/bench_pretrain.py --preset tiny --repeats 3

# does MAE pretraining learn? the controlled study (four arms, three seeds, report with intervals), ~30 min on 2 cores
learn: setup
	$(BIN)/vmae study --budget cpu --out runs/study

# on a bare GPU machine (no package index): the wheels brought along in .whl/ (DALI's in pieces), the bench set,
# every gpu test and the GPU loader benches, within 8 minutes; results in gpu-check/. CI runs its --dry-run.
gpu-check:
	python3 bench/gpu_check.py --wheels .whl --out gpu-check

# the pretraining study at its gpu budget (8 minutes of its own lease): Fashion-MNIST's files in .fashion-mnist/
gpu-study:
	python3 bench/gpu_check.py --wheels .whl --out gpu-study --steps wheels,study

clean:
	rm -rf runs .pytest_cache
