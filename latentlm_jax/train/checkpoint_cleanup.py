"""Unfinished checkpoints left by a hard kill, found and removed before a run resumes.

An asynchronous Orbax save writes ``<step>.orbax-checkpoint-tmp-<n>/`` and renames it to
``<step>/`` once every item is on disk (in a bucket: ``<step>/`` gets ``commit_success.txt``
last). A process killed in between leaves the temporary folder (or, in a bucket, a step folder
without its commit file). Orbax never lists those as steps, so a restore only ever picks a
finalised one; this module removes them at start-up (process 0) so they neither pile up nor
collide with the step's next save.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from latentlm_jax import paths


def partial_checkpoints(directory: paths.PathLike) -> list[str]:
    """Names of the unfinished checkpoints in ``directory`` (empty when it does not exist)."""
    if not paths.exists(directory):
        return []
    return sorted(ocp.path.step.tmp_checkpoints(paths.resolve(directory)))


def remove_partial_checkpoints(directory: paths.PathLike) -> list[str]:
    """Removes the unfinished checkpoints in ``directory`` (process 0 only; the others return
    an empty list) and returns their names."""
    if jax.process_index() != 0:
        return []
    names = partial_checkpoints(directory)
    for name in names:
        paths.join(directory, name).rmtree(missing_ok=True)
    return names
