"""latentlm_jax.models."""
