# The two commands a newcomer needs. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow lint install clean wheel-check gpu

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,onnx,postgres]'
	$(BIN)/python -m pip install -q -e '.[nni]' || echo "the nni extra did not install with this torch; the NNI tests skip"
	touch $@

install: $(BIN)/.installed

# The main job on real images (Fashion-MNIST, installed when it can be; else the bundled digits); writes runs/demo/.
demo: install
	bash examples/demo.sh $(BIN)

# The fast suite (every feature's behaviour); the end-to-end runs of a minute or more (marked slow: the benchmarks'
# smoke runs, the worker and kill tests) are `make test-slow`, which CI runs too. Both run TEST_WORKERS pytest-xdist
# workers of one torch thread each (tests/conftest.py); TEST_WORKERS=0 runs in this process with 2 threads.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
test: install
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST) --durations=25
	$(BIN)/ruff check kdsearch tests benchmarks
	$(BIN)/lint-imports

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(XDIST) --durations=25

# What a user gets from `pip install kdsearch`: build the wheel, install it into a fresh venv and run a
# short find (digits, a parameter budget, 1 epoch) and an export from outside the checkout.
# It installs with --no-compile: byte-compiling torch's files took ~40 of the install's ~80 s, and the two commands
# compile what they import (~7 s each where PYTHONDONTWRITEBYTECODE is set, as on this machine). Not for the main
# venv: the tests start dozens of processes, and each would pay those seconds again.
WHEEL_VENV ?= .wheel-venv
wheel-check: install
	rm -rf dist $(WHEEL_VENV)
	$(BIN)/python -m pip wheel -q --no-deps -w dist .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --no-compile dist/kdsearch-*.whl
	cd "$$(mktemp -d)" && $(CURDIR)/$(WHEEL_VENV)/bin/kdsearch find --teacher test_resnet --teacher-epochs 1 \
		--budget 0.3Mparams --trials 6 --top-k 1 --epochs 1 --out run -q \
		&& $(CURDIR)/$(WHEEL_VENV)/bin/kdsearch export run --best --out student

# Every GPU measurement in one command (run it when a session is lent a GPU): writes benchmarks/results/*_gpu.json.
gpu: install
	bash benchmarks/gpu.sh

clean:
	rm -rf $(VENV) $(WHEEL_VENV) dist build runs .pytest_cache
