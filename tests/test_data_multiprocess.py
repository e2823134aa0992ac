"""Two real JAX processes (jax.distributed + gloo) each read only their shard of the data; the
shards are disjoint and together are the one-process stream."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from latentlm_jax.data.pipeline import build_document_dataset
from tests.helpers import multiprocess_env, text_config

WORKER = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, corpus, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid)
    import numpy as np
    from latentlm_jax.config.base import base_config
    from latentlm_jax.data.pipeline import build_document_dataset, build_train_iterator

    c = base_config()
    c.data.source, c.data.text_files, c.data.seq_len = "text_files", (corpus,), 64
    c.train.global_batch_size = 4
    docs = build_document_dataset(c)  # shard from jax.process_index() / process_count()
    ids = [docs[k].tokens for k in range(30)]
    batch = next(build_train_iterator(c))  # this process's rows of the global batch
    np.savez(out, *ids, rows=batch["tokens"])
    print("process", jax.process_index(), "of", jax.process_count(), "rows", batch["tokens"].shape)
""")


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_of_one_stream(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line number {i} of the corpus" for i in range(60)))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(20000 + os.getpid() % 20000)
    env = multiprocess_env()
    procs = [subprocess.Popen([sys.executable, str(script), port, str(p), str(corpus),
                               str(tmp_path / f"p{p}.npz")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for p in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    assert "process 0 of 2 rows (2, 64)" in outs[0] and "process 1 of 2 rows (2, 64)" in outs[1]

    one = build_document_dataset(text_config(corpus), process_index=0, process_count=1)
    shards = []
    for p in range(2):
        data = np.load(tmp_path / f"p{p}.npz")
        shard = [data[f"arr_{k}"] for k in range(30)]
        for k, tokens in enumerate(shard):  # document k of process p = document 2k+p of one
            np.testing.assert_array_equal(tokens, one[2 * k + p].tokens)
        shards.append({t.tobytes() for t in shard})
    # The first epoch (60 lines): disjoint, and together every line exactly once.
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == {one[k].tokens.tobytes() for k in range(60)}
    assert len(shards[0] | shards[1]) == 60
