# AnnotationEfficientSeg: set-up, demo, tests, benchmarks.
#   make demo   installs the core in .venv, builds a phantom cohort, trains, writes a job folder
#   make test   installs the core with test extras in .venv and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	# the CPU build of PyTorch first, so that the core's "torch>=2.1" does not pull CUDA wheels
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/aeseg demo --out demo

# pytest exits 5 when it collects no test (e.g. -k matching nothing): reported, not an error.
test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest Testing -q -p no:cacheprovider $(PYTEST_ARGS); \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/run.py --method supervised --task noisy_organ --profile quick
	$(PY) benchmarks/run.py --method mean_teacher --task noisy_organ --profile quick
	$(PY) benchmarks/table.py

clean:
	rm -rf $(VENV) demo benchmarks/work
