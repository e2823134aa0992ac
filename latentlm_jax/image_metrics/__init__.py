"""Image-set metrics against the standard FID network: FID and Inception Score (``docs/fid.md``).

``inception.py`` is the Inception-v3 of the FID reference implementations (pytorch-fid's, itself a
port of TensorFlow's 2015-12-05 graph), ``weights.py`` loads its converted weights, ``fid.py``
holds the statistics, the Fréchet distance and the Inception Score, ``images.py`` reads image sets
and ``features.py`` runs the network over them; ``convert.py`` turns pytorch-fid's ``.pth`` into
the weights file (``python -m latentlm_jax.image_metrics.convert``); ``latentlm eval-images``
(``cli/eval_images.py``) ties them together.
"""
