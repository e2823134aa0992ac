"""The image σ-VAE for class-conditional ImageNet: 256×256 RGB → a 16×16 grid of 16-dim latents.

    latentlm train --config configs/vae_imagenet.py --workdir runs/in256/vae \
        --config.data.tfds_data_dir=/data/tfds
    latentlm encode --vae-workdir runs/in256/vae --config configs/vae_imagenet.py \
        --config.data.tfds_data_dir=/data/tfds --num-examples 1281167 --out runs/in256/latents

×16 downsampling and 16 latent dims, the shape of the authors' ImageNet tokenizer (KL-16,
``embed_dim=16``, ``ch_mult=(1, 1, 2, 2, 4)``), which configs/latentlm_imagenet.py models with
patch size 1: 256 latents per image. Data: TFDS ``imagenet2012`` prepared by you (the framework
never downloads; ``data.tfds_data_dir``), center-cropped and resized to 256 as the authors'
``center_crop_arr``. ``data.label`` makes ``latentlm encode`` with this config write each image's
class into its latent record. docs/class_conditional.md has the whole path.
"""

from latentlm_jax.config.base import base_config


def get_config():
    c = base_config()
    c.name = "vae_imagenet"
    c.task = "vae_image"
    v = c.vae
    v.kind = "sigma"
    v.std = 0.75  # the reference σ-VAE noise scale
    v.beta = 1e-2  # the reference weight of mean(μ²)
    v.dtype = "bfloat16"
    v.eval_examples = 64
    im = v.image
    im.resolution = 256
    im.downsample = 16
    im.patch_size = 2  # space-to-depth: the first ×2; four conv levels do the other ×8
    im.latent_dim = 16
    im.channels = 128
    im.channel_mult = (1, 2, 2, 4)
    im.num_res_blocks = (2,)
    v.loss.recon = "l1_l2"
    v.loss.adversarial = True
    v.loss.adv_start_step = 50_000
    v.loss.disc_channels = 64

    d = c.data
    d.source = "tfds"
    d.tfds_name = "imagenet2012"
    d.tfds_split = "train"
    d.tfds_feature_map = "image=image"
    d.label = "label"
    d.image_resolution = 256
    d.image_crop = "adm"  # the authors' centre crop (docs/fidelity.md row 7)
    d.eval_split = "validation"
    d.num_workers = 16

    t = c.train
    t.global_batch_size = 256
    t.num_steps = 200_000
    t.learning_rate = 1e-4
    t.warmup_steps = 1000
    t.ema_decay = 0.999
    t.log_every = 100
    t.eval_every = 5000
    c.checkpoint.every_steps = 5000
    c.mesh.ici.data, c.mesh.ici.fsdp = -1, 1
    return c
