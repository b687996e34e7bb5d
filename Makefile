# Medical deep-learning pipelines: Q1 MRI T1->T2 translation, Q2 ECG beat classification.
# `make` lists the targets. Every pipeline target takes DATA=auto|hub|demo|<folder>.

PYTHON   ?= .venv/bin/python
DATA     ?= auto
# per-question sources (a local folder holds one question's data), both default to DATA
Q1_DATA  ?= $(DATA)
Q2_DATA  ?= $(DATA)
# torch requirement: PyPI's Linux wheel is the CUDA build. CI sets TORCH=torch==2.13.0+cpu.
TORCH    ?= torch==2.13.0
# extra flags for the training scripts, e.g. Q1_ARGS="--epochs 10"
Q1_ARGS  ?=
Q2_ARGS  ?=
# RESUME=1 continues killed runs from their last checkpoint (finished runs are kept as they are)
RESUME   ?=
RESUME_FLAG := $(if $(RESUME),--resume,)
# Q2 protocol: Q2_MODELS x Q2_FOLDS-fold cross-validation x SEEDS seeds (0..SEEDS-1), then
# leave one database out and the leaky beat split (seed 0) for contrast
Q2_MODELS ?= resnet context
Q2_FOLDS  ?= 5
SEEDS     ?= 1
Q2_LODO   ?= mitdb svdb incartdb
Q2_LEAKY  ?= resnet
Q2_CURVE_EPOCHS ?= 4
Q2_RR_SETS ?= sinus all
SEED_LIST  = $(shell seq 0 $$(($(SEEDS) - 1)))
# make lab: the port JupyterLab listens on (127.0.0.1 only; reach it through an SSH tunnel)
PORT      ?= 8888

.DEFAULT_GOAL := help
.PHONY: help setup test lint q1 q1-ablations q1-final q2 q2-final q2-curves q2-ablations demo demo-q1 demo-q2 bench notebooks summary lab clean

## List the targets
help:
	@awk '/^## /{d=substr($$0,4); next} /^[a-z0-9-]+:/{if(d){split($$1,t,":"); printf "  make %-10s %s\n", t[1], d}; d=""}' $(MAKEFILE_LIST)
	@echo "  variables: DATA=$(DATA) (or Q1_DATA, Q2_DATA) TORCH=$(TORCH) RESUME=$(RESUME) Q1_ARGS Q2_ARGS"

## Create .venv and install the pinned requirements (torch from TORCH)
setup: .venv/.installed

.venv/.installed: requirements.txt requirements-dev.txt
	python3 -m venv .venv
	.venv/bin/pip install -q "$(TORCH)"
	.venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
	.venv/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

## Run the test suite (no network; real-data tests skip without ../shared/data)
test: setup
	$(PYTHON) -m pytest

## Lint with ruff
lint: setup
	$(PYTHON) -m ruff check .

# Q1 protocol: Q1_MODELS (the solution and the plain reference) x Q1_FOLDS-fold patient
# cross-validation over every patient with inner validation (the Hub: its official validation
# split is the test set), x SEEDS seeds, the baselines on the same folds. Q1_ABLATIONS run on
# folds 0-1 only (make q1-ablations): another model (unet25d, the 2.5-D U-Net) or wN, the
# U-Net at width N; evaluation compares each with the chosen model on the same patients.
Q1_MODELS ?= unet plain
Q1_ABLATIONS ?= unet25d w16 w48
Q1_FOLDS  ?= 5
Q1_SPLIT  ?=      # kfold | official; empty: official wherever the source resolves to the Hub (auto too)
Q1_SPLIT_OF = split=$${Q1_SPLIT:-$$($(PYTHON) -c "from q1_mri.data import resolve_source; \
  print('official' if resolve_source('$(Q1_DATA)').kind == 'hub' else 'kfold')")}; \
  folds=$$([ $$split = kfold ] && seq 0 $$(($(Q1_FOLDS) - 1)) || echo single)

## Q1: EDA (1.A), Q1_FOLDS-fold CV of the U-Net, the 2.5-D U-Net and the plain reference, baselines, evaluation
q1: setup
	$(PYTHON) -m q1_mri.eda --data "$(Q1_DATA)"
	@set -e; $(Q1_SPLIT_OF); for seed in $(SEED_LIST); do \
	  $(PYTHON) -m q1_mri.baselines --data "$(Q1_DATA)" --split $$split --folds $(Q1_FOLDS) --seed $$seed $(RESUME_FLAG); \
	  for model in $(Q1_MODELS); do for fold in $$folds; do \
	    echo "== q1 $$model $$split $$fold seed $$seed"; \
	    $(PYTHON) -m q1_mri.train --data "$(Q1_DATA)" --model $$model --split $$split \
	      --folds $(Q1_FOLDS) $$([ $$fold = single ] || echo --fold $$fold) --seed $$seed \
	      $(RESUME_FLAG) $(Q1_ARGS); \
	  done; done; \
	done
	$(PYTHON) -m q1_mri.eval --data "$(Q1_DATA)"
	$(PYTHON) -m q1_mri.figures --data "$(Q1_DATA)"

## Q1: the ablations on folds 0-1 of seed 0: the 2.5-D U-Net and other widths (Q1_ABLATIONS), each against the chosen model
q1-ablations: setup
	@set -e; $(Q1_SPLIT_OF); for variant in $(Q1_ABLATIONS); do for fold in $$(echo $$folds | cut -d' ' -f1-2); do \
	  case $$variant in w[0-9]*) flags="--model unet --base-channels $${variant#w} --name $$variant";; \
	                    *) flags="--model $$variant";; esac; \
	  $(PYTHON) -m q1_mri.train --data "$(Q1_DATA)" $$flags --split $$split --folds $(Q1_FOLDS) \
	    $$([ $$fold = single ] || echo --fold $$fold) $(RESUME_FLAG) $(Q1_ARGS); \
	done; done
	$(PYTHON) -m q1_mri.eval --data "$(Q1_DATA)"
	$(PYTHON) -m q1_mri.figures --data "$(Q1_DATA)"

## Q1: the deployed model: the chosen configuration's k fold models as the CV scored them (no training); then q1_mri.infer
q1-final: setup
	$(PYTHON) -m q1_mri.final --data "$(Q1_DATA)"

## Q2: EDA (2.A), k-fold cross-validation of Q2_MODELS over SEEDS seeds, LODO, baselines, their ensemble, evaluation
q2: setup
	$(PYTHON) -m q2_ecg.eda --data "$(Q2_DATA)"
	@set -e; for seed in $(SEED_LIST); do \
	  $(PYTHON) -m q2_ecg.baselines --data "$(Q2_DATA)" --split kfold --folds $(Q2_FOLDS) --seed $$seed $(RESUME_FLAG); \
	  for model in $(Q2_MODELS); do for fold in $$(seq 0 $$(($(Q2_FOLDS) - 1))); do \
	    echo "== q2 $$model kfold fold $$fold seed $$seed"; \
	    $(PYTHON) -m q2_ecg.train --data "$(Q2_DATA)" --model $$model --split kfold \
	      --folds $(Q2_FOLDS) --fold $$fold --seed $$seed $(RESUME_FLAG) $(Q2_ARGS); \
	  done; done; \
	done
	@set -e; $(PYTHON) -m q2_ecg.baselines --data "$(Q2_DATA)" --split lodo $(RESUME_FLAG); \
	for model in $(Q2_MODELS); do for db in $(Q2_LODO); do \
	  echo "== q2 $$model leave out $$db"; \
	  $(PYTHON) -m q2_ecg.train --data "$(Q2_DATA)" --model $$model --split lodo --fold $$db \
	    $(RESUME_FLAG) $(Q2_ARGS); \
	done; done; \
	for model in $(Q2_LEAKY); do \
	  $(PYTHON) -m q2_ecg.train --data "$(Q2_DATA)" --model $$model --split beat $(RESUME_FLAG) $(Q2_ARGS); \
	done
	$(PYTHON) -m q2_ecg.ensemble --data "$(Q2_DATA)"
	$(PYTHON) -m q2_ecg.eval --data "$(Q2_DATA)"
	$(PYTHON) -m q2_ecg.figures --data "$(Q2_DATA)"

## Q2: the deployed model: the chosen configuration's k fold models as the CV scored them (no training); then q2_ecg.infer
q2-final: setup
	$(PYTHON) -m q2_ecg.final --data "$(Q2_DATA)"

## Q2: longer training of both models on folds 0-1 without early stopping (the curves that size the budget)
q2-curves: setup
	@set -e; for model in $(Q2_MODELS); do for fold in 0 1; do \
	  $(PYTHON) -m q2_ecg.train --data "$(Q2_DATA)" --model $$model --split kfold --folds $(Q2_FOLDS) \
	    --fold $$fold --name curve --budget full --epochs $(Q2_CURVE_EPOCHS) \
	    --patience $(Q2_CURVE_EPOCHS) $(RESUME_FLAG) $(Q2_ARGS); \
	done; done
	$(PYTHON) -m q2_ecg.eval --data "$(Q2_DATA)"
	$(PYTHON) -m q2_ecg.figures --data "$(Q2_DATA)"

## Q2: the ResNet with the other RR feature sets (Q2_RR_SETS), every fold of seed 0 (what the features do per database)
q2-ablations: setup
	@set -e; for set in $(Q2_RR_SETS); do for fold in $$(seq 0 $$(($(Q2_FOLDS) - 1))); do \
	  $(PYTHON) -m q2_ecg.train --data "$(Q2_DATA)" --model resnet --split kfold --folds $(Q2_FOLDS) \
	    --fold $$fold --rr-set $$set --name rr-$$set $(RESUME_FLAG) $(Q2_ARGS); \
	done; done
	$(PYTHON) -m q2_ecg.eval --data "$(Q2_DATA)"
	$(PYTHON) -m q2_ecg.figures --data "$(Q2_DATA)"

## Both pipelines end to end on the built-in demo data, small settings (a few minutes on CPU)
demo: demo-q1 demo-q2

# the demo's small protocol (make demo trains it; make notebooks DATA=demo reads it back)
DEMO_Q1 = Q1_FOLDS=2 Q1_ABLATIONS= \
  Q1_ARGS="--epochs 3 --slices-per-epoch 384 --base-channels 8 --monitor-slices 64 $(Q1_ARGS)"
DEMO_Q2 = Q2_FOLDS=2 Q2_LODO=svdb Q2_RR_SETS= Q2_CURVE_EPOCHS=0 \
  Q2_ARGS="--epochs 2 --beats-per-epoch 4000 --channels 16 16 32 $(Q2_ARGS)"

demo-q1: setup
	$(MAKE) q1 DATA=demo $(DEMO_Q1)

demo-q2: setup
	$(MAKE) q2 DATA=demo $(DEMO_Q2)

## Both questions' headline tables from their metrics.json (the README's results at a glance)
summary: setup
	$(PYTHON) -m tools.summary $(if $(filter-out auto,$(Q1_DATA)),--q1-data "$(Q1_DATA)",) \
	  $(if $(filter-out auto,$(Q2_DATA)),--q2-data "$(Q2_DATA)",)

## Execute both notebooks in place: they run the protocol (finished runs are read back) on Q1_DATA/Q2_DATA
notebooks: setup
	env Q1_MODELS="$(Q1_MODELS)" Q1_FOLDS=$(Q1_FOLDS) Q1_SPLIT="$(Q1_SPLIT)" Q1_ABLATIONS="$(Q1_ABLATIONS)" \
	  Q1_ARGS="$(Q1_ARGS)" Q2_MODELS="$(Q2_MODELS)" Q2_FOLDS=$(Q2_FOLDS) Q2_LODO="$(Q2_LODO)" \
	  Q2_LEAKY="$(Q2_LEAKY)" Q2_RR_SETS="$(Q2_RR_SETS)" Q2_CURVE_EPOCHS=$(Q2_CURVE_EPOCHS) \
	  Q2_ARGS="$(Q2_ARGS)" $(if $(filter demo,$(DATA)),$(DEMO_Q1) $(DEMO_Q2)) \
	  $(PYTHON) tools/run_notebooks.py $(if $(filter-out auto,$(Q1_DATA)),--q1-data "$(Q1_DATA)",) \
	  $(if $(filter-out auto,$(Q2_DATA)),--q2-data "$(Q2_DATA)",)

## Open the notebooks in JupyterLab (kernel: .venv) on 127.0.0.1:PORT; from a laptop: ssh -L PORT:localhost:PORT server
lab: .venv/.lab-installed
	.venv/bin/python -m jupyterlab --no-browser --ip 127.0.0.1 --port $(PORT) --notebook-dir "$(CURDIR)" \
	  $(if $(filter 0,$(shell id -u)),--allow-root,)

.venv/.lab-installed: requirements-lab.txt .venv/.installed
	.venv/bin/pip install -q -r requirements-lab.txt
	touch $@

## Throughput per model: samples/s, peak memory, FLOPs per sample, fraction of the device peak (Q1 also vs a DataLoader)
bench: setup
	$(PYTHON) -m q1_mri.bench --data "$(Q1_DATA)"
	$(PYTHON) -m q2_ecg.bench --data "$(Q2_DATA)"

## Remove demo results and the data cache (real results and checkpoints are kept)
clean:
	rm -rf results/q1/demo results/q2/demo .cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
