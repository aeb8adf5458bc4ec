"""The harness: evaluation (:mod:`~hlm_gym.harness.evaluation`), training
(:mod:`~hlm_gym.harness.training`, :mod:`~hlm_gym.harness.callbacks`) and the learned-vs-analytic
comparison (:mod:`~hlm_gym.harness.compare`) for any env id whose env family
(:mod:`~hlm_gym.harness.family`, :mod:`~hlm_gym.harness.families`) is declared here.

Settings are checked before any work (:mod:`~hlm_gym.harness.checks`,
:mod:`~hlm_gym.harness.hyperparams`; errors in :mod:`~hlm_gym.harness.errors`); output folders
are owned by one run at a time (:mod:`~hlm_gym.harness.run_folder`).

Import the submodules directly; this package imports nothing.
"""
