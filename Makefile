# One entry point for people, CI and the Dockerfiles: they all run these same commands.
# Settings (MODEL_NAME, PORT, HF_CACHE_DIR...) are not set here: the programs read them from the
# environment and ./.env themselves (runtime/config.py), so `make run` and `python -m webapp` agree.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXTRAS ?= export
TEST_EXTRAS := export,test
OPTIMUM_INTEL := optimum-intel==2.1.0
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: venv install export run serve settings test test-slow bench bench-quality lint clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -e ".$(if $(EXTRAS),[$(EXTRAS)])"
	@case ",$(EXTRAS)," in *,export,*) $(PIP) install --no-deps "$(OPTIMUM_INTEL)";; esac
	@touch $@

venv: $(STAMP)  ## create the virtual environment and install serving + export (EXTRAS=export; EXTRAS= serves only)

install: $(STAMP)  ## same as venv

export: $(STAMP)  ## export MODEL_NAME at EXPORT_PRECISION into HF_CACHE_DIR (skips finished work)
	$(PY) -m export

run: $(STAMP)  ## install, then serve on http://localhost:7860 (or $$PORT) at once: the first start downloads and exports, with progress on the page
	$(PY) -m webapp

serve: run  ## same as run

settings: $(STAMP)  ## print the settings in force, from the environment and .env (ENV_FILE=path reads another file)
	@$(PY) -m webapp --print-settings

test:  ## the default test run (fast tiers: unit, web, tiny-model export and parity); installs the test tools
	$(MAKE) EXTRAS=$(TEST_EXTRAS) venv
	$(PY) -m pytest -q

test-slow:  ## the slow tier (full-size model, soak)
	$(MAKE) EXTRAS=$(TEST_EXTRAS) venv
	$(PY) -m pytest -q -m slow

.PHONY: test-docker
test-docker:  ## build Dockerfile.cpu and use the image end to end (a Docker daemon, host networking; 10-25 min)
	$(MAKE) EXTRAS=$(TEST_EXTRAS) venv
	$(PY) tests/docker/check_image.py

bench: ## side-by-side speed benchmark on the exact InternVL3.5-1B configuration (minutes)
	$(MAKE) EXTRAS=export,test,bench venv
	$(PY) -m bench

bench-quality: ## error of each precision / compute option against fp32, full-size and tiny model (~10 min)
	$(MAKE) EXTRAS=export,test,bench venv
	$(PY) -m bench.quality

.PHONY: bench-export
bench-export: ## wall time and peak RSS of `python -m export` on the real-size configuration, per precision (~15 min)
	$(MAKE) EXTRAS=export,test,bench venv
	$(PY) -m bench.export

clean:  ## remove the virtual environment (the model cache is kept)
	rm -rf $(VENV)
