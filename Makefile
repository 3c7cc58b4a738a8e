# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv on first use. torch==2.13.0 is installed first: on these machines it is a
# local CPU wheel; a plain `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= demo-output

.PHONY: install demo demo-quick demo-full test bench starters clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# make demo: the short tour (minutes); make demo-full: the whole walk from scratch
demo: $(STAMP)
	$(BIN)/cmrsynth demo --tour --out $(OUT)

demo-full: $(STAMP)
	$(BIN)/cmrsynth demo --out $(OUT)

demo-quick: $(STAMP)
	$(BIN)/cmrsynth demo --quick --out $(OUT)

# --dist loadfile: a file's tests share one worker, so its module fixtures (the demo run, the audit's
# trained models) run once. (loadgroup's xdist_group marks are silently ignored with pytest 9.2.)
test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -n 2 --dist loadfile -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

starters: $(STAMP)
	$(BIN)/python -m CMRSynthLib.training.starters --out Resources/models

clean:
	rm -rf $(VENV) $(OUT)
