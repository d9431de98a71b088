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

# Every method's main benchmark on the quick profile (about 2 hours on 2 cores), then the
# README tables. One row alone: python benchmarks/run.py --method M --task T (see README).
bench: $(STAMP)
	$(PY) benchmarks/run.py --method supervised --task noisy_organ
	$(PY) benchmarks/run.py --method mean_teacher --task noisy_organ
	$(PY) benchmarks/run.py --method meta_reweight --task noisy_organ --noise mid --train-seeds 3 --no-ablations
	$(PY) benchmarks/run.py --method aide --task noisy_organ --noise mid --train-seeds 3 --no-ablations
	$(PY) benchmarks/run.py --method shape_prior_gan --task ellipse_us --train-seeds 5 --no-ablations --threads 1 --jobs 2
	$(PY) benchmarks/run.py --method presence_absence --task lesion_pa --setting 1pct
	$(PY) benchmarks/update_readme.py

clean:
	rm -rf $(VENV) demo benchmarks/work
