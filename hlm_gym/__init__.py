"""hlm-gym: Gymnasium environments for hybrid language-model inference over a wireless link."""

__version__ = "0.1.0"
