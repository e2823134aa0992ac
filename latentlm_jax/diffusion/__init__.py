"""latentlm_jax.diffusion."""
