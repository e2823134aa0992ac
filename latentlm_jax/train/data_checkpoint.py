"""An Orbax checkpoint handler for data-iterator state: one JSON file per JAX process.

Works with any iterator exposing ``get_state()`` / ``set_state(state)``, where the state is
JSON-serialisable or bytes (stored base64). Each process restores its own shard's position.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


def _filename(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class DataIteratorHandler(ocp.CheckpointHandler):
    def save(self, directory: epath.Path, args: DataSave) -> None:
        state = args.item.get_state()
        if isinstance(state, bytes):
            payload = {"bytes_b64": base64.b64encode(state).decode("ascii")}
        else:
            payload = {"json": state}
        _filename(epath.Path(directory)).write_text(json.dumps(payload))

    def restore(self, directory: epath.Path, args: DataRestore) -> Any:
        path = _filename(epath.Path(directory))
        if not path.exists():
            raise FileNotFoundError(
                f"{path} missing: the checkpoint was written by a different number of processes")
        payload = json.loads(path.read_text())
        state = (base64.b64decode(payload["bytes_b64"]) if "bytes_b64" in payload
                 else payload["json"])
        args.item.set_state(state)
        return args.item

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    item: Any
