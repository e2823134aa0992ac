"""The demo's multimodal LatentLM on σ-VAE latents of the built-in data (text, images, audio).

Trained by ``latentlm demo`` (which points ``data.latent_files`` and the σ-VAE workdirs at its
own workdir), or by hand once ``make demo`` has made the σ-VAEs and latents in ``runs/demo``:

    latentlm train --config configs/latentlm_tiny.py --workdir runs/lm
    latentlm generate --workdir runs/lm --prompt "a large red circle in the top left" \
        --modality image --num-samples 4 --out samples/

The latent dims must be those of the σ-VAEs (configs/vae_image_tiny.py: 8, vae_audio_tiny.py: 16).

On your own latents (a folder ``latentlm encode --out DIR`` wrote), pass the folder as the config's
argument: dims, shards, statistics and σ-VAEs then come from ``DIR/latents.json``
(``data.latents_dir``; README "Train on your own data"):

    latentlm train --config configs/latentlm_tiny.py:runs/mine/latents --workdir runs/mine/lm
"""

from latentlm_jax.config.base import base_config


def get_config(latents_dir: str = ""):
    c = base_config()
    c.name = "latentlm_tiny"
    c.task = "lm"

    m = c.model
    m.num_layers = 4
    m.emb_dim = 128
    m.num_heads = 4
    m.num_kv_heads = 2
    m.head_dim = 32
    m.mlp_dim = 384
    m.image_latent_dim = 8
    m.audio_latent_dim = 16
    m.head.depth = 3
    m.head.width = 0  # = emb_dim
    m.head.mlp_ratio = 2.0
    m.diffusion.schedule = "cosine"
    # v: x̂₀ = α·x_t − σ·v̂ has no 1/α blow-up at the noisy end of the cosine schedule, as the
    # ε-model's x̂₀ = (x_t − σ·ε̂)/α has (docs/diffusion.md)
    m.diffusion.prediction = "v"
    m.diffusion.batch_mul = 2
    # The head runs on gathered latent targets only: ceil(0.4 · 128) = 52 slots per row and
    # modality, and the packer closes a row before its targets would pass them (none dropped).
    m.diffusion.target_fraction = 0.4
    m.diffusion.loss_weight = 1.0

    d = c.data
    d.source = "latents"
    # Where `make demo` (latentlm demo --workdir runs/demo) leaves the σ-VAEs and their latents;
    # `latentlm demo` itself points these at its own --workdir.
    d.latent_files = ("runs/demo/latents/latents-image-*.array_record",
                      "runs/demo/latents/latents-audio-*.array_record")
    d.latent_stats_dir = "runs/demo/latents"
    d.image_vae_workdir = "runs/demo/vae_image"
    d.audio_vae_workdir = "runs/demo/vae_audio"
    if latents_dir:  # everything the demo's paths and dims said comes from the folder instead
        d.latents_dir = latents_dir
        d.latent_files, d.latent_stats_dir = (), ""
        d.image_vae_workdir = d.audio_vae_workdir = ""
        m.image_latent_dim = m.audio_latent_dim = 0
    d.seq_len = 128
    # One record is one image or one clip: image records draw among the image tasks, audio records
    # among the audio ones. No text-only documents: every caption is seen next to its media.
    # Weighted by difficulty (measured, docs/benchmarks.md): with 3/2/3/2/1 and 1000 steps
    # image→text reached 74% (shape and left/right confusions), audio→text 100%; with 3/3/2/1/1
    # and 1400 steps a seed-0 run still confused shapes (image→text 93%, raw weights), 3/4/2/1/1
    # scored 100 / 99% on seeds 0 / 1 (docs/fidelity.md "Sampling settings").
    d.task_weights = ("text_to_image=3,image_to_text=4,text_to_audio=2,audio_to_text=1,"
                      "interleaved=1")
    d.cond_drop = 0.1

    t = c.train
    t.global_batch_size = 32
    # 1800, not 1400: a seed-0 LM at 1400 steps blended the second note's pitch with the third's
    # (text→audio 83%, 16 of 73 second notes wrong); at 1800 steps seeds 0-4 scored 95.0-100% on
    # 300 prompts (docs/demo.md "How the settings were found"); +2 min of the demo
    t.num_steps = 1800
    t.learning_rate = 2e-3
    t.warmup_steps = 100
    t.min_lr_ratio = 0.05
    t.weight_decay = 0.01
    t.log_every = 50
    # The EMA starts from the initial weights and has no warm-up, so the decay must leave the
    # initial weights a negligible share after num_steps (0.995^1800 ≈ 1e-4).
    t.ema_decay = 0.995
    c.checkpoint.every_steps = 250
    c.checkpoint.keep = 2
    return c
