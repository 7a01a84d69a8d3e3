"""PAPRIKA (Tajwar et al. 2025, "Training a Generally Curious Agent"):
sample many multi-turn trajectories per task of several task groups with
min-p sampling, score them (success, then fewer turns), pair each task's best
against a random worse one, then SFT on the winners and RPO on the pairs.

    jaxrl-lm paprika --config launch/configs/paprika.yaml --out runs/paprika [--resume]

Stages, each in its own folder of the run: generate/ (`generate.py`),
pairs/ (`pairs.py`), sft/ and rpo/ (`pipeline.py`); `config.py` reads and
checks a paprika config and builds the stages' train configs; `curriculum.py`
holds the task-selection statistics (the coefficient of variation and UCB over
groups).
"""
