"""latentlm_jax.config."""
