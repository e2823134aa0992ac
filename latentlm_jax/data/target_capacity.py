"""The diffusion head's slots per row, and the per-row target budget that keeps every latent
target inside them (issue 16, "no silent drops"; docs/batch_format.md).

With ``model.diffusion.target_fraction = f > 0`` the loss gathers each row's latent targets of a
modality into :func:`head_slots_per_row` = ``max(1, ceil(f · seq_len))`` slots
(``lm/loss.gather_targets``); a target beyond them would be dropped. So the pipeline packs rows to
that budget (:func:`target_budget` → ``RowPacker(target_budget=...)``): a row is closed before a
document would take a modality's targets above its slots, an interleaved document stops taking
partners before it would, and a document that alone has more (one span longer than the slots)
goes to the bad-input policy as ``too_many_targets``. :func:`check_span_budget` refuses such a
fraction at ``latentlm train`` start when the span lengths are known (pre-encoded latents:
``sequence_length`` in ``stats-<modality>.json``, read by ``cli/input_checks.check_latents``),
naming the smallest fraction that fits.
``f = 0`` runs the head on every position: no budget.
"""

from __future__ import annotations

import math

import ml_collections as mlc

from latentlm_jax.config.loading import ConfigError
from latentlm_jax.modality import MODALITY_NAMES, latent_dims

FIELD = "model.diffusion.target_fraction"


def head_slots_per_row(fraction: float | mlc.ConfigDict, seq_len: int) -> int:
    """Positions per row each modality's diffusion head runs on: ``max(1, ceil(f · seq_len))``
    gathered target slots for ``f > 0``, every position (``seq_len``) for ``f = 0``. ``fraction``
    is ``f`` or a model config (its ``diffusion.target_fraction``). The loss, the FLOP count and
    the packer's budget all use this one formula."""
    f = float(fraction if isinstance(fraction, (int, float)) else
              fraction.diffusion.target_fraction)
    return max(1, math.ceil(f * seq_len)) if f > 0 else int(seq_len)


def target_budget(config: mlc.ConfigDict) -> dict[int, int] | None:
    """``{modality: slots}`` for the packer of a LatentLM whose head runs on gathered slots;
    ``None`` when there is nothing to bound (``target_fraction = 0`` or no latent modality)."""
    dims = latent_dims(config.model)
    if not dims or float(config.model.diffusion.target_fraction) <= 0:
        return None
    slots = head_slots_per_row(config.model, int(config.data.seq_len))
    return {m: slots for m in dims}


def smallest_fraction(targets: int, seq_len: int) -> float:
    """The smallest ``target_fraction`` of 3 decimals whose slots hold ``targets``."""
    f = max(0.001, math.floor(1000 * (targets - 1) / seq_len) / 1000)
    while head_slots_per_row(f, seq_len) < targets:
        f = round(f + 0.001, 3)
    return f


def check_span_budget(config: mlc.ConfigDict, span_lengths: dict[int, int]) -> None:
    """A ConfigError when one span of some modality (``span_lengths[m]`` latents, hence as many
    targets) has more targets than the head's slots: no row could ever hold it."""
    budget = target_budget(config)
    if budget is None:
        return
    seq_len = int(config.data.seq_len)
    f = config.model.diffusion.target_fraction
    for m, slots in budget.items():
        k = span_lengths.get(m)
        if k is not None and int(k) > slots:
            raise ConfigError(FIELD, f"{f} gives the diffusion head {slots} slots per row, fewer "
                                     f"than the {k} targets of one {MODALITY_NAMES[m]} span: set "
                                     f"it to ≥ {smallest_fraction(int(k), seq_len)} (or 0: every "
                                     "position)")
