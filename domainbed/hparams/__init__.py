"""Hyperparameters: ``space`` (a default and a seeded random draw per name) and ``registry`` (the
parts composed for one run: data and backbone, MoE, optimisation, the algorithm's own)."""
