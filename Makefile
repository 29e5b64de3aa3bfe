# Two commands on a fresh machine:  make demo   |   make test
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recbole_mm-installed

.PHONY: demo test install clean

$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,encoders]"
	touch $(STAMP)

install: $(STAMP)

# Train and evaluate on the generated sample dataset and print RecBole's result table.
demo: $(STAMP)
	$(PY) run_recbole_mm.py --model=SASRecF --dataset=mm_sample --epochs=10 --hidden_size=64 --inner_size=128

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf saved log log_tensorboard dataset/mm_sample .pytest_cache
