"""latentlm_jax.parallel."""
