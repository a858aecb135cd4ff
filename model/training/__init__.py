"""Training, evaluation, scoring a pool, and hyperparameter search."""
