# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test bench clean

$(STAMP): requirements-ci.txt pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PY) -m pip install -q -r requirements-ci.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m maavt_fast demo --out demo_out

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m "not gpu" tests

bench: $(STAMP)
	$(PY) -m maavt_fast bench ops
	$(PY) -m maavt_fast bench e2e

clean:
	rm -rf .venv demo_out runs
