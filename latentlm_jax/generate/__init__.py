"""Generation: token-by-token decoding of mixed text / latent sequences with a KV cache."""
