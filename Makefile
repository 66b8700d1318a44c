# Two commands a newcomer needs: `make demo` and `make test`. Both build the virtualenv on first use, then
# fetch and build the real servers (Apache Kafka jars, Kubernetes binaries, helm) into caches keyed by version.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test testbed lint crds deploy bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv --clear $(VENV)  # from scratch: a dependency dropped from the pins leaves no trace
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

testbed: $(STAMP)
	$(PY) -m tests.support.testbed

demo: testbed
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests bench examples
	$(VENV)/bin/ruff format --check operator tests bench examples
	$(VENV)/bin/mypy

test: lint testbed
	$(VENV)/bin/pytest -q

crds: $(STAMP)
	$(VENV)/bin/ferry crds --out crds
	rm -f charts/ferry/crds/*.yaml
	cp crds/*.yaml charts/ferry/crds/

# deploy/ferry.yaml: Namespace + CRDs + `helm template` of charts/ferry with default values.
deploy: crds
	$(PY) -m tests.support.chart

bench: $(STAMP)
	$(PY) -m bench.obsdump_throughput

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
