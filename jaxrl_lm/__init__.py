"""jaxrl_lm: RL fine-tuning of language models in pure JAX."""

__version__ = "0.1.0"
