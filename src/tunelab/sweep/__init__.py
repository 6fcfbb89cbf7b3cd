"""Hyperparameter search over dotted recipe keys on Optuna: every trial is a normal run folder."""

from tunelab.sweep.study import optimize, run_sweep, study_dir, validate_sweep

__all__ = ["optimize", "run_sweep", "study_dir", "validate_sweep"]
