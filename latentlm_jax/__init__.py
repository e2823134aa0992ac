"""latentlm_jax: multimodal latent language models (next-token diffusion) in JAX/Flax NNX."""

__version__ = "0.1.0"
