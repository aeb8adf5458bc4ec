"""hlm-gym: Gymnasium environments for hybrid language-model inference over a wireless link."""

__version__ = "0.1.0"

from hlm_gym.environments.registration import register_envs as _register_envs

_register_envs()
