# ltseg — the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST := $(PY) -m pytest
CKPT   ?=

.PHONY: install demo test test-slow bench-step bench-eval bench-loss-speed bench-losses calibrate clean

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard ltseg/evaluation/*.c)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: generate the built-in dataset, train the tiny model on CPU, evaluate, print the LVIS table
demo: $(STAMP)
	$(PY) -m ltseg.train

## test: the fast suite (CI); slow checks are marked `slow`
test: $(STAMP)
	$(PYTEST) -m "not slow" -q

## test-slow: real training runs and large benchmarks
test-slow: $(STAMP)
	$(PYTEST) -m slow -q

bench-step: $(STAMP)
	$(PY) scripts/bench_step.py

bench-eval: $(STAMP)
	$(PY) scripts/bench_eval.py

## bench-loss-speed: forward+backward of every loss vs BCE (8192 RoIs x 1203 classes)
bench-loss-speed: $(STAMP)
	$(PY) scripts/bench_losses.py

## bench-losses: train the tiny model with every loss over 3 seeds (hours on CPU); reweight and
## seesaw diverge on the demo schedule without gradient clipping (docs/losses.md)
bench-losses: $(STAMP)
	$(PY) scripts/bench_losses_synthetic.py --loss-override reweight:trainer.clip_grad_norm=10 \
		--loss-override seesaw:trainer.clip_grad_norm=10 -- trainer.progress=false

calibrate: $(STAMP)
	@test -n "$(CKPT)" || (echo "usage: make calibrate CKPT=path/to/checkpoint.pt" && exit 2)
	$(PY) -m ltseg.calibrate checkpoint=$(CKPT) calibration=simcal

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
