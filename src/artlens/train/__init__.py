"""artlens.train: probe heads on cached embeddings (`probe`: heads fitted by `fitting`, chosen per
task by `search`) and Lightning fine-tuning (`finetune`, with `finetune_data`, `finetune_model`,
`finetune_trainer`, `finetune_checkpoints`), from YAML recipes (`config`) over prepared rows
(`data`), with masked multi-task losses (`losses`), augmentations (`transforms`), freezing
strategies (`freezing`), optimizers and schedules (`optim`), calibration (`calibrate`) and export
(`export`); tasks trained their own way after the probe: origin by held-out groups (`origin`) and
the artist head with its `unknown artist` rule (`artist`, `artist_task`; thresholds fitted by
`openset`).

    from artlens.train.config import load_recipe
    from artlens.train.probe import run_probe
    recipe = load_recipe("configs/clip-probe-wikiart.yaml")
    run_probe(recipe, "runs/clip-probe")

Importing this package is cheap; torch and Lightning load with the submodules that need them.
"""
