# The two commands a newcomer needs. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,onnx]'
	touch $@

install: $(BIN)/.installed

# The main job on the embedded default data (scikit-learn digits); writes runs/demo/.
demo: install
	$(BIN)/kdsearch find --teacher resnet101 --budget 10ms --out runs/demo
	$(BIN)/kdsearch export runs/demo --best --format onnx --out runs/demo/student

test: install
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check kdsearch tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
