"""``data.task_weights``: the sequence tasks a multimodal row is built from, and their weights.

A leaf of the config package, so validation can parse the field without importing the data
pipeline (latentlm_jax/data/sequences.py builds the documents).
"""

from __future__ import annotations

from collections.abc import Mapping

TASKS = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text", "text", "interleaved")
DEFAULT_TASK_WEIGHTS = {task: 1.0 for task in TASKS}


def parse_task_weights(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"text_to_image=2,text=1"`` or a mapping -> weights for every task (unnamed ones 0).
    ``None`` / ``""`` -> :data:`DEFAULT_TASK_WEIGHTS`."""
    if not spec:
        return dict(DEFAULT_TASK_WEIGHTS)
    if isinstance(spec, str):
        items = []
        for part in spec.split(","):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"task weight {part!r} is not name=weight")
            items.append((name.strip(), value))
    else:
        items = list(spec.items())
    weights = dict.fromkeys(TASKS, 0.0)
    for name, value in items:
        if name not in weights:
            raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
        weights[name] = float(value)
        if not weights[name] >= 0:
            raise ValueError(f"task weight {name}={value} must be ≥ 0")
    return weights
