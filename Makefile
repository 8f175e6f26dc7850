# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
# `make test-min` runs the same suite on the oldest supported torch/triton (requirements-min.txt, .venv-min).
PY := .venv/bin/python
TESTS = TRITON_INTERPRET=1 $(1)/bin/python -m pytest -q -m "not gpu" tests

.PHONY: demo test test-min bench clean

# venv DIR REQUIREMENTS: create DIR with REQUIREMENTS and this checkout installed editable
define venv
$(1)/.installed: $(2) pyproject.toml
	test -d $(1) || python3 -m venv $(1)
	$(1)/bin/python -m pip install -q -r $(2)
	$(1)/bin/python -m pip install -q --no-deps -e .
	touch $$@
endef
$(eval $(call venv,.venv,requirements-ci.txt))
$(eval $(call venv,.venv-min,requirements-min.txt))

demo: .venv/.installed
	$(PY) -m maavt_fast demo --out demo_out

test: .venv/.installed
	$(call TESTS,.venv)

test-min: .venv-min/.installed
	$(call TESTS,.venv-min)

bench: .venv/.installed
	$(PY) -m maavt_fast bench ops
	$(PY) -m maavt_fast bench e2e

clean:
	rm -rf .venv .venv-min demo_out runs
