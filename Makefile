# One entry point for people, CI and the Dockerfiles: they all run these same commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= export,test
OPTIMUM_INTEL := optimum-intel==2.2.0
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

export MODEL_NAME ?= OpenGVLab/InternVL3_5-1B
export HF_CACHE_DIR ?= $(CURDIR)/data/model_cache
export PORT ?= 7860

.PHONY: venv install export run serve test test-slow bench bench-quality lint clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".[$(EXTRAS)]"
	@case ",$(EXTRAS)," in *,export,*) $(PIP) install --no-deps "$(OPTIMUM_INTEL)";; esac
	@touch $@

venv: $(STAMP)  ## create the virtual environment and install (EXTRAS=export,test by default)

install: $(STAMP)  ## same as venv

export: $(STAMP)  ## export MODEL_NAME at EXPORT_PRECISION into HF_CACHE_DIR (skips finished work)
	$(PY) -m export

run: $(STAMP)  ## install, export if needed, serve on http://localhost:$(PORT)
	@$(PY) -m export --check || $(PY) -m export
	$(PY) -m webapp

serve: $(STAMP)  ## serve without the export check
	$(PY) -m webapp

test: $(STAMP)  ## the default test run (fast tiers: unit, web, tiny-model export and parity)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## the slow tier (full-size model, soak)
	$(PY) -m pytest -q -m slow

bench: ## side-by-side speed benchmark on the exact InternVL3.5-1B configuration (minutes)
	$(MAKE) EXTRAS=export,test,bench venv
	$(PY) -m bench

bench-quality: ## error of each precision / compute option against fp32, full-size and tiny model (~10 min)
	$(MAKE) EXTRAS=export,test,bench venv
	$(PY) -m bench.quality

clean:  ## remove the virtual environment (the model cache is kept)
	rm -rf $(VENV)
