"""latentlm_jax.train."""
