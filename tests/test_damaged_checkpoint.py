"""A damaged checkpoint is one line when a run is loaded for inference, never an Orbax traceback."""

import jax
import pytest

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError
from latentlm_jax.train.checkpoint_io import load_params, save_run_config
from latentlm_jax.train.trainer import train
from tests.helpers import tiny_lm_config


@pytest.mark.slow
def test_damaged_checkpoint_is_one_line_naming_an_earlier_step(tmp_path):
    config = tiny_lm_config()
    config.train.num_steps, config.checkpoint.every_steps, config.checkpoint.keep = 4, 2, 3
    workdir = str(tmp_path / "run")
    save_run_config(config, workdir)
    train(config, workdir, devices=jax.devices()[:1])
    load_params(workdir, use_ema=False)  # intact: loads
    step_dir = paths.join(workdir, "checkpoints", "4")
    for f in paths.find_files(step_dir):  # a host lost while the bucket was being synced
        paths.remove(f)
    with pytest.raises(ConfigError) as err:
        load_params(workdir, use_ema=False)
    msg = str(err.value)
    assert "step 4" in msg and "damaged or incomplete" in msg and "--step 2" in msg
    assert "\n" not in msg
    load_params(workdir, step=2, use_ema=False)  # the earlier one still loads
