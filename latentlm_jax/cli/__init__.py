"""latentlm_jax.cli."""
