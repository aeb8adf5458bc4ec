"""Training hyperparameters (installed as ``hlm_gym._agents``; never a top-level package)."""
