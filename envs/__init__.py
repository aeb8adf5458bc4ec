"""Scenario presets (installed as ``hlm_gym._envs``; never a top-level package)."""
