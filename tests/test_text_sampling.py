"""Top-k / top-p filtering and token sampling against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from latentlm_jax.generate.text_sampling import filter_logits, sample_tokens


def np_keep(logits, top_k, top_p):
    keep = np.ones_like(logits, bool)
    if top_k:
        keep &= logits >= np.sort(logits)[::-1][top_k - 1]
    if top_p < 1:  # nucleus of the top-k-filtered, renormalised distribution
        order = [i for i in np.argsort(-logits) if keep[i]]
        p = np.exp(logits[order] - logits.max())
        p /= p.sum()
        mass = 0.0
        nucleus = np.zeros_like(keep)
        for idx, pi in zip(order, p, strict=True):
            if mass < top_p:
                nucleus[idx] = True
            mass += pi
        keep &= nucleus
    return keep


def test_filters_match_numpy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.normal(size=32).astype(np.float32) * 3
        for k, p in [(0, 0.9), (5, 1.0), (8, 0.5), (0, 0.01)]:
            got = np.asarray(filter_logits(jnp.asarray(logits), k, p)) > -1e29
            np.testing.assert_array_equal(got, np_keep(logits, k, p))


def test_sampling_frequencies_and_greedy():
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    keys = jax.random.split(jax.random.key(0), 20000)
    draws = np.asarray(jax.vmap(lambda k: sample_tokens(k, logits))(keys))
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws),
                               [0.5, 0.3, 0.15, 0.05], atol=0.015)
    draws = np.asarray(jax.vmap(lambda k: sample_tokens(k, logits, top_p=0.7))(keys))
    assert set(np.unique(draws)) == {0, 1}  # nucleus of 0.5 + 0.3
    np.testing.assert_allclose(np.mean(draws == 0), 0.5 / 0.8, atol=0.015)
    assert int(sample_tokens(keys[0], logits, temperature=0.0)) == 0
