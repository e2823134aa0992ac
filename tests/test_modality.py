"""The modality table agrees with the tokenizers, the config schema and the model."""

from flax import nnx

from latentlm_jax.config.base import base_config
from latentlm_jax.data.tokenizer import ByteTokenizer
from latentlm_jax.modality import (
    AUDIO,
    DELIMITERS,
    IMAGE,
    LATENT_DIM_FIELDS,
    LATENT_MODALITIES,
    MODALITY_IDS,
    MODALITY_NAMES,
    TEXT,
    VAE_TASKS,
    delimiter_ids,
    is_multimodal,
    latent_dims,
    max_latent_dim,
)
from latentlm_jax.models.latentlm import LatentLM


def test_ids_names_and_fields_are_one_table():
    assert TEXT == 0 and set(LATENT_MODALITIES) == set(MODALITY_NAMES) == {IMAGE, AUDIO}
    assert {MODALITY_IDS[n]: n for n in MODALITY_IDS} == MODALITY_NAMES
    schema = base_config()
    for m in LATENT_MODALITIES:
        assert LATENT_DIM_FIELDS[m] in schema.model  # a real config field
        assert VAE_TASKS[m] == f"vae_{MODALITY_NAMES[m]}"


def test_delimiters_are_the_tokenizer_ids():
    tok = ByteTokenizer()
    assert delimiter_ids(IMAGE) == (tok.boi_id, tok.eoi_id)
    assert delimiter_ids(AUDIO) == (tok.boa_id, tok.eoa_id)
    assert DELIMITERS[IMAGE] == ("<boi>", "<eoi>")
    assert tok.decode([*delimiter_ids(IMAGE), *delimiter_ids(AUDIO)]) == ""  # specials drop


def test_latent_dims_switch_modalities_on():
    c = base_config()
    assert latent_dims(c.model) == {} and not is_multimodal(c) and max_latent_dim(c.model) == 0
    c.model.audio_latent_dim = 16
    assert latent_dims(c.model) == {AUDIO: 16} and is_multimodal(c)
    c.model.image_latent_dim = 8
    assert latent_dims(c.model) == {IMAGE: 8, AUDIO: 16} and max_latent_dim(c.model) == 16
    model = LatentLM(c.model, rngs=nnx.Rngs(0))
    assert set(model.heads.keys()) == {MODALITY_NAMES[IMAGE], MODALITY_NAMES[AUDIO]}
    assert model.head(AUDIO).latent_dim == 16
