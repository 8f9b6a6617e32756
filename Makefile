# A new user needs two commands: `make up` (set up, then run the main job) and `make test`.
# Set-up installs torch first, so pip never pulls a multi-GB CUDA build onto a CPU machine that
# has the CPU wheel at hand; GPU users can set TORCH to their own pin (or keep their build).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup up test test-fast lint typecheck format bench clean

$(BIN)/robot-sac: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $@

setup: $(BIN)/robot-sac  ## create .venv with the project and every extra

up: setup  ## the main job: service, learner and two simulated Panda arms learning to reach
	$(BIN)/robot-sac up --steps 6000

test: setup  ## the whole suite, the slow learning tests included (what CI runs)
	$(BIN)/python -m pytest

test-fast: setup  ## everything but the tests marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: typecheck  ## ruff's checks and format, and mypy (typecheck)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow pyproject's package-dir mapping (services/ and sim/ install as
# robot_sac.services and robot_sac.sim): it checks a tree of links laid out as installed.
typecheck: setup  ## mypy over the installed layout of robot_sac, services and sim
	rm -rf .mypy-tree && mkdir -p .mypy-tree/robot_sac
	ln -s $(CURDIR)/robot_sac/* .mypy-tree/robot_sac/
	ln -s $(CURDIR)/services .mypy-tree/robot_sac/services
	ln -s $(CURDIR)/sim .mypy-tree/robot_sac/sim
	cd .mypy-tree && $(CURDIR)/$(BIN)/python -m mypy -p robot_sac --ignore-missing-imports

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup  ## the core benchmarks (minutes; they print figures and write bench/results/)
	$(BIN)/python bench/learner_throughput.py
	$(BIN)/python bench/gradient_estimators.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache .mypy-tree *.egg-info
