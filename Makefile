# ltseg — the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST := $(PY) -m pytest
CKPT   ?=

.PHONY: install demo test test-slow bench-step bench-eval bench-loss-speed bench-losses calibrate clean

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard ltseg/evaluation/*.c)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## demo: generate the built-in dataset, train the tiny model on CPU, evaluate, print the LVIS table
demo: $(STAMP)
	$(PY) -m ltseg.train

## test: the fast suite (CI); slow checks are marked `slow`
test: $(STAMP)
	$(PYTEST) -m "not slow" -q

## test-slow: real training runs and large benchmarks
test-slow: $(STAMP)
	$(PYTEST) -m slow -q

bench-step: $(STAMP)
	$(PY) scripts/bench_step.py

bench-eval: $(STAMP)
	$(PY) scripts/bench_eval.py

## bench-loss-speed: forward+backward of every loss vs BCE (8192 RoIs x 1203 classes)
bench-loss-speed: $(STAMP)
	$(PY) scripts/bench_losses.py

## bench-losses: train the tiny model with every loss over 3 seeds (hours on CPU); reweight and
## seesaw diverge on the demo schedule without gradient clipping (docs/losses.md)
bench-losses: $(STAMP)
	$(PY) scripts/bench_losses_synthetic.py --loss-override reweight:trainer.clip_grad_norm=10 \
		--loss-override seesaw:trainer.clip_grad_norm=10 -- trainer.progress=false

calibrate: $(STAMP)
	@test -n "$(CKPT)" || (echo "usage: make calibrate CKPT=path/to/checkpoint.pt" && exit 2)
	$(PY) -m ltseg.calibrate checkpoint=$(CKPT) calibration=simcal

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

# ---------------------------------------------------------------------------------------------------
# Paper-table reproductions (docs/reproducing.md): every row of a paper's main LVIS table, one
# torchrun job after another. DATA = folder holding lvis/lvis_v{0.5,1}_{train,val}.json and
# coco/{train2017,val2017}; WEIGHTS = torchvision ResNet-50 state dict (WEIGHTS_R101: ResNet-101,
# for the R-101 rows). `make repro-list` (or `make -n repro-<paper> DATA=.. WEIGHTS=..`) prints the
# commands without running them. Re-running a target resumes unfinished rows (resume=auto).
GPUS         ?= 8
DATA         ?=
WEIGHTS      ?=
WEIGHTS_R101 ?=
OUT          ?= outputs/repro
SEED         ?= 0
TORCHRUN     ?= $(VENV)/bin/torchrun

REPRO_V05 := data.train.ann_file=$(DATA)/lvis/lvis_v0.5_train.json data.train.image_root=$(DATA)/coco/train2017 \
	data.val.ann_file=$(DATA)/lvis/lvis_v0.5_val.json data.val.image_root=$(DATA)/coco/val2017
REPRO_V1  := data.train.ann_file=$(DATA)/lvis/lvis_v1_train.json data.train.image_root=$(DATA)/coco \
	data.val.ann_file=$(DATA)/lvis/lvis_v1_val.json data.val.image_root=$(DATA)/coco
R50          := model.backbone.weights=$(WEIGHTS)
R101         := model=mask_rcnn_r101_fpn model.backbone.weights=$(WEIGHTS_R101)
CASCADE_R50  := model=cascade_mask_rcnn_r50_fpn model.backbone.weights=$(WEIGHTS)
CASCADE_R101 := model=cascade_mask_rcnn_r50_fpn model.backbone.depth=101 model.backbone.weights=$(WEIGHTS_R101)

# $(call repro_train,<run folder under OUT>,<experiment>,<data overrides>,<model and loss overrides>)
repro_train = $(TORCHRUN) --nproc_per_node=$(GPUS) -m ltseg.train +experiment=$(2) $(3) $(4) \
	seed=$(SEED) resume=auto hydra.run.dir=$(OUT)/$(1)_seed$(SEED)
repro_need = $(if $(strip $($(1))),,$(error $(1) is not set: $(2)))

.PHONY: repro-list repro-check repro-check-r101 repro-eql repro-droploss repro-droploss-table1 \
	repro-droploss-table2 repro-droploss-table3 repro-seesaw repro-simcal repro-fbs-aegl

repro-check:
	$(call repro_need,DATA,make $(MAKECMDGOALS) DATA=<folder with lvis/ and coco/> WEIGHTS=<resnet50 .pth>)
	$(call repro_need,WEIGHTS,make $(MAKECMDGOALS) WEIGHTS=<torchvision ResNet-50 state dict .pth>)

repro-check-r101: repro-check
	$(call repro_need,WEIGHTS_R101,the R-101 rows need WEIGHTS_R101=<torchvision ResNet-101 state dict .pth>)

## repro-list: print every repro-* command (placeholders for DATA, WEIGHTS, WEIGHTS_R101)
repro-list:
	@$(MAKE) --no-print-directory -n repro-eql repro-droploss repro-seesaw repro-simcal repro-fbs-aegl \
		DATA='<DATA>' WEIGHTS='<WEIGHTS>' WEIGHTS_R101='<WEIGHTS_R101>'

## repro-eql: EQL Table 1 (LVIS v0.5, mask AP): BCE vs EQL on Mask R-CNN/Cascade, R-50/R-101 (8 runs)
repro-eql: repro-check-r101
	$(call repro_train,eql/t1_mask_r50_bce,eql_lvis_v0.5,$(REPRO_V05),$(R50) loss=bce)
	$(call repro_train,eql/t1_mask_r50_eql,eql_lvis_v0.5,$(REPRO_V05),$(R50) loss=eql loss.image_level_rule=true)
	$(call repro_train,eql/t1_mask_r101_bce,eql_lvis_v0.5,$(REPRO_V05),$(R101) loss=bce)
	$(call repro_train,eql/t1_mask_r101_eql,eql_lvis_v0.5,$(REPRO_V05),$(R101) loss=eql loss.image_level_rule=true)
	$(call repro_train,eql/t1_cascade_r50_bce,eql_lvis_v0.5,$(REPRO_V05),$(CASCADE_R50) loss=bce)
	$(call repro_train,eql/t1_cascade_r50_eql,eql_lvis_v0.5,$(REPRO_V05),$(CASCADE_R50) loss=eql loss.image_level_rule=true)
	$(call repro_train,eql/t1_cascade_r101_bce,eql_lvis_v0.5,$(REPRO_V05),$(CASCADE_R101) loss=bce)
	$(call repro_train,eql/t1_cascade_r101_eql,eql_lvis_v0.5,$(REPRO_V05),$(CASCADE_R101) loss=eql loss.image_level_rule=true)

## repro-droploss: DropLoss Tables 1, 2 and 3 (25 runs; also repro-droploss-table1/-table2/-table3)
repro-droploss: repro-droploss-table1 repro-droploss-table2 repro-droploss-table3

repro-droploss-table1: repro-check-r101
	$(call repro_train,droploss/t1_mask_r50_bce,droploss_lvis_v0.5,$(REPRO_V05),$(R50) loss=bce)
	$(call repro_train,droploss/t1_mask_r50_eql,droploss_lvis_v0.5,$(REPRO_V05),$(R50) loss=eql)
	$(call repro_train,droploss/t1_mask_r50_droploss,droploss_lvis_v0.5,$(REPRO_V05),$(R50) loss=droploss)
	$(call repro_train,droploss/t1_mask_r101_bce,droploss_lvis_v0.5,$(REPRO_V05),$(R101) loss=bce)
	$(call repro_train,droploss/t1_mask_r101_eql,droploss_lvis_v0.5,$(REPRO_V05),$(R101) loss=eql)
	$(call repro_train,droploss/t1_mask_r101_droploss,droploss_lvis_v0.5,$(REPRO_V05),$(R101) loss=droploss)
	$(call repro_train,droploss/t1_cascade_r50_bce,droploss_lvis_v0.5,$(REPRO_V05),$(CASCADE_R50) loss=bce)
	$(call repro_train,droploss/t1_cascade_r50_eql,droploss_lvis_v0.5,$(REPRO_V05),$(CASCADE_R50) loss=eql)
	$(call repro_train,droploss/t1_cascade_r50_droploss,droploss_lvis_v0.5,$(REPRO_V05),$(CASCADE_R50) loss=droploss)
	$(call repro_train,droploss/t1_cascade_r101_bce,droploss_lvis_v0.5,$(REPRO_V05),$(CASCADE_R101) loss=bce)
	$(call repro_train,droploss/t1_cascade_r101_eql,droploss_lvis_v0.5,$(REPRO_V05),$(CASCADE_R101) loss=eql)
	$(call repro_train,droploss/t1_cascade_r101_droploss,droploss_lvis_v0.5,$(REPRO_V05),$(CASCADE_R101) loss=droploss)

# Table 2's v0.5 rows without RFS other than Softmax are Table 1's Mask R-CNN R-50 rows.
repro-droploss-table2: repro-check
	$(call repro_train,droploss/t2_v0.5_ce,droploss_lvis_v0.5,$(REPRO_V05),$(R50) loss=ce)
	$(call repro_train,droploss/t2_v0.5_rfs_bce,droploss_lvis_v0.5_rfs,$(REPRO_V05),$(R50) loss=bce)
	$(call repro_train,droploss/t2_v0.5_rfs_ce,droploss_lvis_v0.5_rfs,$(REPRO_V05),$(R50) loss=ce)
	$(call repro_train,droploss/t2_v0.5_rfs_eql,droploss_lvis_v0.5_rfs,$(REPRO_V05),$(R50) loss=eql)
	$(call repro_train,droploss/t2_v0.5_rfs_droploss,droploss_lvis_v0.5_rfs,$(REPRO_V05),$(R50) loss=droploss)
	$(call repro_train,droploss/t2_v1_bce,droploss_lvis_v1,$(REPRO_V1),$(R50) loss=bce)
	$(call repro_train,droploss/t2_v1_eql,droploss_lvis_v1,$(REPRO_V1),$(R50) loss=eql)
	$(call repro_train,droploss/t2_v1_droploss,droploss_lvis_v1,$(REPRO_V1),$(R50) loss=droploss)
	$(call repro_train,droploss/t2_v1_rfs_bce,droploss_lvis_v1_rfs,$(REPRO_V1),$(R50) loss=bce)
	$(call repro_train,droploss/t2_v1_rfs_eql,droploss_lvis_v1_rfs,$(REPRO_V1),$(R50) loss=eql)
	$(call repro_train,droploss/t2_v1_rfs_droploss,droploss_lvis_v1_rfs,$(REPRO_V1),$(R50) loss=droploss)

repro-droploss-table3: repro-check
	$(call repro_train,droploss/t3_beql_b4,droploss_lvis_v0.5,$(REPRO_V05),$(R50) loss=beql loss.log_base=4.0)
	$(call repro_train,droploss/t3_beql_b5,droploss_lvis_v0.5,$(REPRO_V05),$(R50) loss=beql loss.log_base=5.0)

## repro-seesaw: Seesaw report Table 1 (LVIS v1, Mask R-CNN R-50, random sampler, 1x): CE, EQL, Seesaw
repro-seesaw: repro-check
	$(call repro_train,seesaw/t1_ce,seesaw_lvis_v1,$(REPRO_V1),$(R50) loss=ce)
	$(call repro_train,seesaw/t1_eql,seesaw_lvis_v1,$(REPRO_V1),$(R50) loss=eql)
	$(call repro_train,seesaw/t1_seesaw,seesaw_lvis_v1,$(REPRO_V1),$(R50) loss=seesaw loss.q=0.0)

## repro-simcal: SimCal Table 3 (LVIS v0.5): train r50-ag and r50, then calibrate (orig/cal/dual)
repro-simcal: repro-check
	$(call repro_train,simcal/t3_r50_ag,simcal_lvis_v0.5_r50_ag,$(REPRO_V05),$(R50))
	$(call repro_train,simcal/t3_r50,simcal_lvis_v0.5_r50,$(REPRO_V05),$(R50))
	$(PY) -m ltseg.calibrate checkpoint=$(OUT)/simcal/t3_r50_ag_seed$(SEED)/model_final.pt calibration=simcal seed=$(SEED)
	$(PY) -m ltseg.calibrate checkpoint=$(OUT)/simcal/t3_r50_seed$(SEED)/model_final.pt calibration=simcal seed=$(SEED)

## repro-fbs-aegl: FBS-AEGL Table 7 (v0.5 R-50, v1 R-50/R-101) and Table 5's BCE baselines (5 runs)
repro-fbs-aegl: repro-check-r101
	$(call repro_train,fbs_aegl/t7_v0.5_r50,fbs_aegl_lvis_v0.5,$(REPRO_V05),$(R50) loss=fbs_aegl)
	$(call repro_train,fbs_aegl/t7_v1_r50,fbs_aegl_lvis_v1,$(REPRO_V1),$(R50) loss=fbs_aegl)
	$(call repro_train,fbs_aegl/t7_v1_r101,fbs_aegl_lvis_v1,$(REPRO_V1),$(R101) loss=fbs_aegl)
	$(call repro_train,fbs_aegl/t5_v1_r50_bce,fbs_aegl_lvis_v1,$(REPRO_V1),$(R50) loss=bce)
	$(call repro_train,fbs_aegl/t5_v1_r101_bce,fbs_aegl_lvis_v1,$(REPRO_V1),$(R101) loss=bce)
