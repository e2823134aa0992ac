"""latentlm_jax.vae."""
