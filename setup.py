"""latentlm_jax: multimodal latent language models with next-token diffusion, in JAX / Flax NNX."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="latentlm_jax",
    version="0.1.0",
    description="Multimodal latent language models (next-token diffusion) in JAX/Flax NNX, "
                "at pod scale",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["latentlm_jax", "latentlm_jax.*"]),
    package_data={"latentlm_jax.kernels": ["*.cc"]},
    install_requires=[
        "jax>=0.10,<0.14",
        "flax>=0.12.4,<0.14",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11.30,<0.13",
        "grain>=0.2.12,<0.3",
        "tensorflow-datasets>=4.9.9,<5",
        "ml-collections>=1.0,<2",
        "chex>=0.1.90,<0.2",
        "numpy>=1.26",
        "pillow>=10",
        "soundfile>=0.12",
        "sentencepiece>=0.2",
        "matplotlib>=3.8",
        "tensorboardX>=2.6",
        # the path layer (latentlm_jax/paths.py): gs:// workdirs and data (docs/storage.md)
        "etils[epath]>=1.7",
        "gcsfs>=2024.2",
    ],
    extras_require={
        # gcp-storage-emulator: the in-memory bucket of tests/test_bucket.py; hypothesis: the
        # property-based data fuzzing of tests/test_data_fuzz.py
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "gcp-storage-emulator>=2024.8",
                 "hypothesis>=6.100"],
        # libtpu at exactly the version this jax release pins.
        "tpu": ["jax[tpu]"],
        # CUDA wheels of jaxlib's plugins for NVIDIA GPUs (launch/slurm_gpu.sbatch).
        "cuda": ["jax[cuda]"],
    },
    entry_points={"console_scripts": ["latentlm=latentlm_jax.cli.main:main"]},
)
