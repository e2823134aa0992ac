"""The VAE tasks' training stream: built-in examples, sharded by process, resumable.

Global step k takes examples [k·B, (k+1)·B) of the (procedural, random-access) training split;
process p keeps those with index ≡ p (mod process_count), so the processes' rows together form the
global batch. The state is the next global example index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class ExampleIterator:
    """Yields ``{key: [B_local, ...], "step": int32[B_local]}`` batches of one modality.

    ``step`` (the global step the batch is for) lets the loss switch terms on at a given step
    without the trainer passing it in.
    """

    def __init__(self, dataset: Sequence[dict[str, Any]], key: str, global_batch: int,
                 process_index: int = 0, process_count: int = 1, dtype: Any = None):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} does not split over "
                             f"{process_count} processes")
        self.dataset, self.key, self.dtype = dataset, key, dtype
        self.global_batch = global_batch
        self.process_index, self.process_count = process_index, process_count
        self.next_index = 0

    def __iter__(self) -> ExampleIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        start = self.next_index
        idx = range(start + self.process_index, start + self.global_batch, self.process_count)
        values = np.stack([np.asarray(self.dataset[i][self.key], self.dtype) for i in idx])
        step = np.full((len(values),), start // self.global_batch, np.int32)
        self.next_index = start + self.global_batch
        return {self.key: values, "step": step}

    def get_state(self) -> dict[str, int]:
        return {"next_index": self.next_index}

    def set_state(self, state: dict[str, int]) -> None:
        self.next_index = int(state["next_index"])
