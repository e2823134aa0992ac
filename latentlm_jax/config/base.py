"""The base config: every field the framework knows, with its default and type.

Config files in ``configs/`` start from :func:`base_config` and change what they need. Validation
(:mod:`latentlm_jax.config.validate`) rejects any key not present here, so typos fail loudly.
"""

from __future__ import annotations

import ml_collections as mlc

from latentlm_jax.config.vae import vae_defaults

# (logical axis, mesh axes) - first match wins; see latentlm_jax/parallel/logical.py.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),  # context parallelism: long sequences split over "context"
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("layers", None),
    ("latent", None),
    ("classes", None),  # the label embedding's rows (model.num_classes + 1)
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("kernel", None),
    # activations
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_vocab", "tensor"),
)


def base_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.name = "run"
    c.seed = 0
    # What to train: "lm" (text or multimodal LatentLM), "vae_image", "vae_audio".
    c.task = "lm"

    # ------------------------------------------------------------------ model
    m = c.model = mlc.ConfigDict()
    m.vocab_size = 264  # byte tokenizer: 256 bytes + 8 special tokens
    m.num_layers = 2
    m.emb_dim = 64
    m.num_heads = 4
    m.num_kv_heads = 2
    m.head_dim = 16
    m.mlp_dim = 256
    m.rope_theta = 10_000.0
    m.norm_eps = 1e-6
    m.dtype = "float32"  # compute dtype: float32 | bfloat16
    m.param_dtype = "float32"
    m.scan_layers = True
    m.remat_policy = "none"  # none | full | save_dots
    # Attention implementation (docs/attention.md): xla (the reference: explicit scores and mask)
    # | dot_product (jax.nn.dot_product_attention: cuDNN flash on GPU, XLA elsewhere)
    # | splash (Pallas splash-attention kernel; TPU only)
    # | cpu_flash (a fused C++ kernel for XLA:CPU through the XLA FFI, built on first use; CPU only)
    m.attention = "xla"
    m.tie_embeddings = False
    m.init_std = 0.02
    # The authors' choices (docs/fidelity.md rows 13, 15, 18), off by default: norm_scale False =
    # RMSNorms without a learned gain; rope_frequencies geometric θ^(−2j/D) | authors
    # θ^(−j/(D/2−1)); init normal = N(0, init_std) | torch_default = PyTorch's nn.Linear
    # U(±1/√fan_in) for the projections (models/layers.py).
    m.norm_scale = True
    m.rope_frequencies = "geometric"
    m.init = "normal"
    # Continuous modalities (LatentLM). A latent dim of 0 switches the modality off; with both off
    # the model is a plain text LM.
    m.image_latent_dim = 0
    m.audio_latent_dim = 0
    # Class-conditional image generation (docs/class_conditional.md): a learned label embedding
    # of num_classes + 1 rows (the last is the null class, for guidance); documents read
    # [<class k>] z₁ … z_N. 0 = off. Needs data.label.
    m.num_classes = 0
    hd = m.head = mlc.ConfigDict()  # next-token diffusion head, one per continuous modality
    hd.depth = 3
    hd.width = 0  # 0 = model emb_dim
    hd.mlp_ratio = 4.0
    df = m.diffusion = mlc.ConfigDict()
    df.schedule = "cosine"  # cosine | linear
    df.prediction = "eps"  # eps | v
    df.batch_mul = 4  # (t, ε) draws per latent per backbone pass ("ddpm_batch_mul")
    df.loss_weight = 1.0  # λ in CE + λ·diffusion
    # per_modality: diffusion = Σ_m (mean loss of modality m); per_target: one mean over every
    # latent target of every modality (the same with one modality; lm/loss.py)
    df.loss_weighting = "per_modality"
    # > 0: run the head only on each row's latent targets, gathered into ceil(f · seq_len) slots per
    # row and modality; the packer closes a row before its targets of a modality would pass them
    # (data/target_capacity.py: none is dropped; a span longer than the slots is a config error /
    # the too_many_targets bad input); 0 = every position, masked.
    df.target_fraction = 0.0

    # ------------------------------------------------------------------ data
    d = c.data = mlc.ConfigDict()
    # text: shapes_tones_captions | text_files; multimodal: shapes_tones | manifest | tfds | latents
    # | synthetic (a fixed random batch for `latentlm bench train` only; docs/benchmarks.md)
    # σ-VAE tasks: the built-in data (shapes_tones_captions or shapes_tones) | manifest | tfds
    d.source = "shapes_tones_captions"
    d.text_files = ()  # paths or globs, used when source == text_files
    d.split = "train"
    d.seq_len = 128
    d.tokenizer = "byte"  # byte | sentencepiece
    d.tokenizer_model = ""  # SentencePiece .model path when tokenizer == sentencepiece
    d.shuffle = True
    d.seed = 0
    d.num_workers = 0  # parallel readers (LM: Grain processes; σ-VAE: threads); 0 = in-process
    d.prefetch = 2  # batches buffered ahead (σ-VAE: made by a background thread)
    # What every command does with an unusable example: skip (counted; the counts are printed at
    # the end) | error (the first one stops the command with one line naming it, exit status 2)
    d.bad_input = "skip"
    # Multimodal sequences (latentlm_jax/data/sequences.py)
    d.task_weights = ""  # "text_to_image=2,image_to_text=1,..."; "" = all tasks equally
    d.cond_drop = 0.1  # P(caption dropped) in text→image/audio docs, for classifier-free guidance
    # The class-label field (an int in [0, model.num_classes)) of the manifest lines / TFDS
    # features / built-in data ("label": shape × colour × size × position, 180 classes); set, the
    # documents are [<class k>] z₁ … z_N with the null class at rate cond_drop
    # (data/class_sequences.py). "" = off.
    d.label = ""
    d.max_interleaved = 3  # examples per interleaved document, at most
    # User data (docs/data_sources.md)
    d.manifest = ""  # JSONL manifest path when source == manifest
    d.tfds_name = ""
    d.tfds_split = "train"
    d.tfds_data_dir = ""
    d.tfds_feature_map = "text=text"  # "ours=theirs,..." (ours: text, image, audio)
    d.tfds_sample_rate = 0  # 0 = the data is already at data.sample_rate
    d.latent_files = ()  # ArrayRecord shards of pre-encoded latents (latentlm encode)
    # The σ-VAE noise on those latents (docs/vae.md "Fresh noise"): fresh = z = μ + σ·ε drawn anew
    # each time a span is read, keyed by (seed, stream index) so a resume is bitwise; frozen = one
    # draw per example keyed by (seed, its index, modality), the same every epoch. Latents encoded
    # as one sample (before this, or by a plain VAE) are refused by fresh and used as is by frozen.
    d.latent_noise = "fresh"
    # How those latents are normalised for the LatentLM (data/latent_noise.py): per_dim = each
    # latent dim's mean / std (as `latentlm encode` stores them); scalar = ONE bias and ONE scale
    # per modality (the authors'), from the same stats; generation uses the run's choice.
    d.latent_normalisation = "per_dim"
    # Where the σ-VAEs that made those latents live (generate / demo decode and encode with them)
    d.image_vae_workdir = ""
    d.audio_vae_workdir = ""
    d.latent_stats_dir = ""  # holds stats-<modality>.json; "" = the directory of latent_files
    # A folder `latentlm encode --out` wrote (its latents.json descriptor); "" = off. When set
    # (data.source="latents", task="lm"), `latentlm train` fills latent_files, latent_stats_dir,
    # the σ-VAE workdirs and any model.*_latent_dim left at 0 from it before training; a value
    # already set that disagrees is a config error (docs/data_sources.md).
    d.latents_dir = ""
    d.image_resolution = 32
    d.sample_rate = 16000
    d.audio_samples = 16000
    # Images with more pixels are refused as bad input (too_large) before they are decoded:
    # 2^27 ≈ 134 MP, above any camera's photo, below Pillow's decompression-bomb error (≈179 MP,
    # the most allowed) - a 33 KB PNG can declare 12000×12000 pixels and take 1.7 GB to decode.
    d.max_image_pixels = 2**27
    # How a manifest / TFDS image becomes image_resolution²: "bicubic_square" = one bicubic
    # resampling of the centred square; "adm" = the ADM centre crop of LatentLM's authors
    # (box-halve while ≥ 2×, bicubic, crop; data/media.py adm_crop, docs/data_sources.md).
    d.image_crop = "bicubic_square"
    # Held-out data for the LM's eval at train.eval_every (docs/evaluation.md): the built-in
    # data's eval_split ("" = "test"), a TFDS eval_split, or eval_<field> for user data.
    d.eval_split = ""
    d.eval_text_files = ()
    d.eval_manifest = ""
    d.eval_latent_files = ()
    d.eval_latents_dir = ""  # a folder `latentlm encode --split test --out DIR` wrote
    d.eval_examples = 256  # held-out documents, the same ones at every eval and in every run
    d.eval_draws = 4  # fixed (t, ε) draws per latent of the eval diffusion loss

    # ------------------------------------------------------------------ training
    t = c.train = mlc.ConfigDict()
    t.global_batch_size = 8
    t.num_steps = 100
    t.grad_accum_steps = 1
    t.learning_rate = 1e-3
    t.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio
    t.warmup_steps = 10
    t.b1 = 0.9
    t.b2 = 0.98
    t.eps = 1e-8
    t.weight_decay = 0.01
    t.grad_clip = 1.0
    t.log_every = 10
    t.eval_every = 0  # 0 = never
    t.ema_decay = 0.0  # EMA of parameters kept in the train state; 0 = off (paper: 0.9999)
    # A step whose loss, a loss term or the gradient norm is NaN/Inf never updates parameters,
    # optimizer state or EMA (docs/reliability.md). "halt": the run stops at the next metrics
    # fetch or save, naming the step and the terms, saving nothing after it; "skip": the step
    # still advances (data moves on) and counts in nonfinite_skipped, and the run stops after
    # max_nonfinite such steps in a row.
    t.nonfinite = "halt"  # halt | skip
    t.max_nonfinite = 10
    # jax.profiler trace of train steps [profile_start_step, + profile_steps) into
    # <workdir>/profile (TensorBoard's profile plugin); -1 = off. Counts completed steps: 0 traces
    # from the first step (compiled ahead, so compilation is not in the trace).
    t.profile_start_step = -1
    t.profile_steps = 3

    # ------------------------------------------------------------------ checkpoints
    k = c.checkpoint = mlc.ConfigDict()
    k.every_steps = 50
    k.keep = 3
    k.async_save = True
    # Also save when this many minutes passed since the last save (0 = off): bounds the work a
    # hard kill loses. Process 0's clock decides; every process saves the same step.
    k.every_minutes = 0.0
    # Multi-process runs agree on SIGTERM / every_minutes saves at steps divisible by this
    # (docs/preemption.md); a preempted pod saves at most this many steps after the notice.
    k.agree_every_steps = 1

    # ------------------------------------------------------------------ mesh & sharding
    mesh = c.mesh = mlc.ConfigDict()
    # "context" splits sequences (activations' "length") for context parallelism: attention
    # all-gathers keys and values over it (docs/attention.md).
    mesh.axes = ("data", "fsdp", "context", "tensor")
    mesh.ici = mlc.ConfigDict({"data": -1, "fsdp": 1, "context": 1, "tensor": 1})  # -1 = fill
    mesh.dcn = mlc.ConfigDict({"data": 1, "fsdp": 1, "context": 1, "tensor": 1})  # across slices
    c.sharding_rules = DEFAULT_RULES
    # The TPU topology the config is sized for (e.g. "v5p:4x4x4", × target_slices slices joined
    # by DCN); `latentlm bench memory` compiles for it by default. "" = none named.
    c.target_topology = ""
    c.target_slices = 1

    # ------------------------------------------------------------------ observability
    o = c.metrics = mlc.ConfigDict()
    o.peak_tflops_per_device = 0.0  # 0 = measure with a short matmul calibration (CPU)

    # ------------------------------------------------------------------ distributed
    dist = c.distributed = mlc.ConfigDict()
    dist.coordinator_address = ""  # host:port; empty = auto (TPU / SLURM) or single process
    dist.num_processes = 0  # 0 = auto
    dist.process_id = -1  # -1 = auto
    dist.cpu_collectives = "gloo"  # for local multi-process CPU runs

    # ------------------------------------------------------------------ σ-VAE tokenizers
    c.vae = vae_defaults()
    return c
