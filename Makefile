# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

# torch/torchvision first and pinned (CUDA build, runs on CPU too), so nothing pulls another torch.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) app.py

test: install
	OMP_WAIT_POLICY=PASSIVE MMT_SMOKE=1 $(PY) -m pytest -q tests --nbmake notebooks

test-fast: install
	$(PY) -m pytest -q -x tests -m "not slow and not browser"

bench: install
	$(PY) -m mmt_core bench --models mat_b,ast_b,mvit_v2_s_video,mmt_b,mbt_b,tv_mvit_v2_s --device cpu --mode infer

clean:
	rm -rf $(VENV) .pytest_cache
