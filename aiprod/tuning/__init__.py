"""Hyperparameter search (Ray Tune + Optuna TPE + ASHA) around the curriculum's training code.

    space.py      the search space from `config.tune`, a trial's config overrides, best.yaml
    objective.py  the validation figure: generated samples (fixed seeds) against held-out clips
    trial.py      one trial = a curriculum run of the chosen phase(s), reporting the figure
    search.py     Tuner / restore, and the outputs (trials.csv, best.yaml, plots, importances)
"""
