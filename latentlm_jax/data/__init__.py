"""latentlm_jax.data."""
