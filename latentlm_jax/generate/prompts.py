"""Prompts files for ``latentlm generate --prompts-file F``.

Two formats, told apart by the file name:

* ``*.jsonl``: one JSON object per line, ``{"prompt": str, "modality": "image" | "audio",
  "count": int ≥ 1, "seed": int ≥ 0}``; only ``prompt`` is required, the others default to
  ``--modality``, ``--num-samples`` and ``--seed``; any other key is an error (a typo would
  otherwise be ignored).
* anything else: plain text, one prompt per line (``--modality``, ``--num-samples``, ``--seed``
  for all of them).

Blank lines are skipped; a UTF-8 byte-order mark and CRLF line ends are accepted. Every problem is
a :class:`ConfigError` naming the file and line, raised before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import json

from latentlm_jax import paths
from latentlm_jax.config.loading import ConfigError

MEDIA = ("image", "audio")
KEYS = ("prompt", "modality", "count", "seed")


@dataclasses.dataclass(frozen=True)
class PromptRequest:
    """``count`` samples of ``modality`` for ``prompt``; ``index`` counts prompts from 0 (it names
    the output files), ``line`` is the 1-based line in the file (0: ``--prompt``)."""

    index: int
    line: int
    prompt: str
    modality: str
    count: int
    seed: int


def read_prompts(path: str, *, modality: str | None, count: int, seed: int
                 ) -> list[PromptRequest]:
    """The requests in ``path`` (see the module docstring); defaults from the command line."""
    try:
        raw = paths.read_bytes(path)
    except OSError as e:
        raise ConfigError("", f"cannot read --prompts-file {path}: "
                              f"{e.strerror or type(e).__name__}") from e
    jsonl = path.endswith(".jsonl")
    out: list[PromptRequest] = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path} line {number}"
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError("", f"{where}: not valid UTF-8 (byte {e.start})") from e
        if number == 1:
            line = line.removeprefix("\ufeff")
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = _parse_jsonl(line, where) if jsonl else {"prompt": line.strip()}
        out.append(_request(fields, where, index=len(out), line=number, modality=modality,
                            count=count, seed=seed))
    if not out:
        raise ConfigError("", f"--prompts-file {path} holds no prompts")
    return out


def single_prompt(prompt: str, *, modality: str | None, count: int, seed: int) -> PromptRequest:
    """``--prompt TEXT`` as a one-line prompts file."""
    return _request({"prompt": prompt}, "--prompt", index=0, line=0, modality=modality,
                    count=count, seed=seed)


def _parse_jsonl(line: str, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError("", f"{where}: not JSON ({e.msg}, column {e.colno})") from e
    if not isinstance(obj, dict):
        raise ConfigError("", f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ConfigError("", f"{where}: unknown key(s) {', '.join(unknown)}; a line holds "
                              f"{', '.join(KEYS)}")
    return obj


def _int(value: object, name: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError("", f"{where}: {name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def _request(fields: dict, where: str, *, index: int, line: int, modality: str | None,
             count: int, seed: int) -> PromptRequest:
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("", f"{where}: needs a non-empty prompt, got {prompt!r}")
    mod = fields.get("modality", modality)
    if mod is None:
        raise ConfigError("", f"{where}: no modality (give --modality image|audio, or "
                              '"modality" on the line)')
    if mod not in MEDIA:
        raise ConfigError("", f"{where}: modality must be one of {', '.join(MEDIA)}, got {mod!r}")
    return PromptRequest(index=index, line=line, prompt=prompt, modality=mod,
                         count=_int(fields.get("count", count), "count", where, 1),
                         seed=_int(fields.get("seed", seed), "seed", where, 0))
