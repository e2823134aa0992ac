"""latentlm_jax.bench."""
