"""Where a compiled program's time goes: a ``jax.profiler`` trace of a few calls, read back and
summed per XLA op, with each matmul's FLOPs parsed from the compiled HLO.

``profile_calls`` traces ``calls`` calls of a function into a folder (TensorBoard's profile plugin
and Perfetto read it: ``<dir>/plugins/profile/<run>/<host>.xplane.pb`` and ``.trace.json.gz``).
``summarize`` reads the Perfetto trace back and keeps the events named after an instruction of
the compiled module (what XLA's runtimes name their op events, on CPU, GPU and TPU alike), so
Python and runtime bookkeeping drop out. It reports, per call:

- the op time summed over all events — on XLA:CPU independent ops run concurrently on the host's
  cores, so this is thread time and can exceed the wall time;
- every matmul (a ``dot``, alone or inside a fusion) grouped by shape, with its FLOPs (2·M·N·K
  from the HLO, times its executions per call: a scanned layer's once per layer) and the rate
  its events imply. XLA:CPU's Eigen matmuls run on Eigen's own thread pool and their events time
  only the dispatch: a rate above 1.5× the measured peak (when given) is marked ``async`` rather
  than believed;
- the other ops grouped by the JAX operation that produced them (HLO ``op_name`` metadata), and
  the slowest single ops.

Each traced call runs inside a ``CALL_EVENT`` annotation, with its minor page faults counted. A
call with more than ``FAULTY_CALL_PAGES`` faults wrote into fresh heap pages (the host heap grew:
docs/benchmarks.md, profile findings 8 and 14), so its ops look two to four times slower than they
are; when at least one call is clean, only the clean calls' ops are counted.

This is how docs/benchmarks.md's "profile findings" were made; ``latentlm bench train --profile
DIR`` runs it on a config's train step, and ``latentlm profile DIR`` on the trace a training run
wrote (``train.profile_start_step``): both leave the compiled step's HLO (``HLO_FILE``) and the
number of traced steps (``META_FILE``) beside the trace.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import resource
import time
from collections.abc import Callable
from typing import Any

import jax

from latentlm_jax import paths

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_ARRAY = re.compile(r"^\w+\[([\d,]*)\]")
HLO_FILE = "train_step.hlo.txt"
CALL_EVENT = "latentlm_profiled_call"  # the annotation around each traced call
# More minor faults than this in one call: it ran into fresh heap pages (a step that grows the heap
# faults 10⁵–10⁶ pages; a clean one tens to hundreds).
FAULTY_CALL_PAGES = 10_000
META_FILE = "profile.json"
# Ops whose events span the ops they run (a scanned layer loop): timed through those ops instead.
CONTAINERS = frozenset({"while", "conditional", "call"})
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_DOT = re.compile(r"\bdot\(%([\w.\-]+), %([\w.\-]+)\)")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(",") if d)


def _product(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _shape_and_opcode(rest: str) -> tuple[tuple[int, ...], str]:
    """``f32[8,4]{1,0} fusion(...)`` → ((8, 4), "fusion"); a tuple shape gives ()."""
    if rest.startswith("("):  # a tuple: skip to its closing parenthesis
        depth, end = 0, len(rest)
        for pos, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                end = pos + 1
                break
        shape, after = (), rest[end:]
    else:
        head, _, after = rest.partition(" ")
        m = _ARRAY.match(head)
        shape = _dims(m.group(1)) if m else ()
    op = re.match(r"\s*([\w\-]+)\(", after)
    return shape, op.group(1) if op else ""


def parse_hlo(hlo_text: str) -> dict[str, dict[str, Any]]:
    """Every instruction of a compiled HLO module's text: ``{name: {"shape", "opcode", "line",
    "computation", "entry", "op_name", "flops", "dot"}}`` (``entry``: in the ENTRY computation).
    ``flops`` is 2·(output elements)·(contracted size) for a ``dot``, and for an instruction that
    calls a computation (a fusion) the sum over the dots inside it; ``dot`` is
    ``"[out] = [lhs] · [rhs]"`` (a fusion's dots joined by ``;``)."""
    computations: dict[str, list[str]] = {}
    instructions: dict[str, dict[str, Any]] = {}
    current, entry = None, False
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            m = _COMPUTATION.match(line)
            current, entry = (m.group(1) if m else None), line.startswith("ENTRY ")
            if current:
                computations[current] = []
            continue
        m = _INSTRUCTION.match(line)
        if m and current is not None:
            name = m.group(1)
            op = _OP_NAME.search(line)
            shape, opcode = _shape_and_opcode(m.group(2))
            instructions[name] = {"shape": shape, "opcode": opcode, "line": line.strip(),
                                  "computation": current, "entry": entry,
                                  "op_name": op.group(1) if op else "", "flops": 0, "dot": ""}
            computations[current].append(name)
    for info in instructions.values():  # the dots themselves
        m = _DOT.search(info["line"])
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", info["line"])
        if m and contracting and m.group(1) in instructions and m.group(2) in instructions:
            lhs = instructions[m.group(1)]["shape"]
            rhs = instructions[m.group(2)]["shape"]
            k = _product(lhs[int(d)] for d in _dims(contracting.group(1)))
            info["flops"] = 2 * _product(info["shape"]) * k
            info["dot"] = f"{list(info['shape'])} = {list(lhs)} · {list(rhs)}"
    for info in instructions.values():  # fusions and calls: the dots of what they call
        m = _CALLS.search(info["line"])
        if m and not info["flops"] and m.group(1) in computations:
            inner = [instructions[n] for n in computations[m.group(1)] if instructions[n]["flops"]]
            info["flops"] = sum(i["flops"] for i in inner)
            info["dot"] = "; ".join(i["dot"] for i in inner)
    return instructions


def profile_calls(fn: Callable[[], Any], calls: int, out_dir: str
                  ) -> tuple[str, list[dict[str, float]]]:
    """Runs ``fn`` (which returns arrays to wait for) ``calls`` times under ``jax.profiler`` into
    ``out_dir``, each call inside a ``CALL_EVENT`` annotation. Returns the Perfetto trace file
    written (``….trace.json.gz``) and each call's wall seconds and minor page faults."""
    if calls < 1:
        raise ValueError(f"profile_calls needs calls ≥ 1, got {calls}")
    paths.makedirs(out_dir)
    pattern = os.path.join(out_dir, "**", "*.trace.json.gz")
    before = set(paths.glob_files(pattern))
    timings = []
    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
        for i in range(calls):
            with CallTimer(i) as timer:
                jax.block_until_ready(fn())
            timings.append(timer.timing)
    # run folders are named by their start time (YYYY_MM_DD_HH_MM_SS): the newest sorts last
    new = sorted(set(paths.glob_files(pattern)) - before)
    if not new:
        raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {out_dir}")
    return new[-1], timings


class CallTimer:
    """``with CallTimer(i) as t: …`` marks the block as traced call ``i`` (a ``CALL_EVENT``
    annotation) and leaves its wall seconds and minor page faults in ``t.timing``. The block must
    wait for its own results."""

    def __init__(self, call: int):
        self.annotation = jax.profiler.TraceAnnotation(CALL_EVENT, call=call)
        self.timing: dict[str, float] = {}

    def __enter__(self) -> CallTimer:
        self.annotation.__enter__()
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.timing = {"seconds": time.perf_counter() - self.t0, "page_faults": float(
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults)}
        self.annotation.__exit__(*exc)


def _trace_events(trace_file: str) -> list[dict[str, Any]]:
    with paths.open_file(trace_file, "rb") as raw, gzip.open(raw, "rt") as f:
        return json.load(f)["traceEvents"]


def call_windows(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(start, end) in trace microseconds of each ``CALL_EVENT`` annotation, in call order (empty
    for a trace made without them)."""
    calls = [e for e in events if e.get("ph") == "X" and e.get("name") == CALL_EVENT
             and "dur" in e]
    calls.sort(key=lambda e: e["ts"])
    return [(e["ts"], e["ts"] + e["dur"]) for e in calls]


def op_event_times(trace_file: str | list[dict[str, Any]], names: set[str] | dict[str, Any],
                   module: str = "", windows: list[tuple[float, float]] | None = None
                   ) -> dict[str, tuple[float, int]]:
    """(seconds summed, number of events) per op, over the trace's complete events (a trace file,
    or its events already read) whose name is one of ``names`` and, when ``module`` is given and
    an event names its HLO module (XLA:CPU's do, in ``args.hlo_module``), whose module is
    ``module``: other programs that ran or compiled during the trace can reuse op names like
    ``fusion.3``. With ``windows``, only events that start inside one of them count. An op inside
    a loop body has one event per iteration."""
    events = _trace_events(trace_file) if isinstance(trace_file, str) else trace_file
    seconds: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in names or "dur" not in e:
            continue
        if module and e.get("args", {}).get("hlo_module", module) != module:
            continue
        if windows is not None and not any(lo <= e["ts"] <= hi for lo, hi in windows):
            continue
        seconds[e["name"]] += e["dur"] * 1e-6
        counts[e["name"]] += 1
    return {n: (seconds[n], counts[n]) for n in seconds}


def clean_calls(timings: list[dict[str, float]]) -> list[int]:
    """The calls (indices) with at most ``FAULTY_CALL_PAGES`` minor page faults; every call when
    none is clean."""
    clean = [i for i, t in enumerate(timings) if t.get("page_faults", 0) <= FAULTY_CALL_PAGES]
    return clean or list(range(len(timings)))


def module_name(hlo_text: str) -> str:
    """``HloModule jit_train_step, ...`` → ``jit_train_step`` ("" when the text has no header)."""
    m = re.search(r"^HloModule ([\w.\-]+)", hlo_text, re.MULTILINE)
    return m.group(1) if m else ""


def _group(info: dict[str, Any]) -> str:
    """``jit(train_step)/transpose(jvp(...))/mul`` → ``transpose(jvp(...))/mul``; an op that no
    JAX operation named (a copy XLA inserted) by its opcode: ``(copy)``."""
    op_name = info["op_name"]
    if not op_name:
        return f"({info['opcode'] or 'unnamed'})"
    return op_name.split("/", 1)[1] if op_name.startswith("jit(") and "/" in op_name else op_name


def summarize(trace_file: str, hlo_text: str, calls: int, *, peak_flops: float = 0.0,
              top: int = 15, timings: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """Per-call op times of a traced compiled module (module docstring). ``peak_flops`` (FLOP/s,
    0 = unknown) marks matmul rows whose implied rate exceeds 1.5× it as ``async``;
    ``timings`` (from :func:`profile_calls`) is kept as the summary's ``"timings"``, and when the
    trace has one ``CALL_EVENT`` per call, calls that faulted (:func:`clean_calls`) are left out:
    ``"counted_calls"`` lists the calls whose ops the figures average."""
    hlo = parse_hlo(hlo_text)
    timed_ops = {n for n, info in hlo.items() if info["opcode"] not in CONTAINERS}
    events = _trace_events(trace_file)
    timings = timings or []
    windows = call_windows(events)
    counted = list(range(calls))
    if timings and len(windows) == len(timings) == calls:  # leave out calls that faulted
        counted = clean_calls(timings)
        windows = [windows[i] for i in counted]
    else:  # a trace without per-call annotations (or faults): every event counts
        windows = None
    seconds = op_event_times(events, timed_ops, module_name(hlo_text), windows)
    if not seconds:
        raise RuntimeError(f"no op of the compiled module appears in {trace_file}")
    n = len(counted)
    per_call = {name: t / n for name, (t, _) in seconds.items()}
    runs = {name: k / n for name, (_, k) in seconds.items()}  # executions per call (loop bodies)
    async_above = 1.5 * peak_flops if peak_flops > 0 else float("inf")
    matmuls: dict[str, dict[str, float]] = {}
    others: dict[str, dict[str, float]] = {}
    for name, s in per_call.items():
        info = hlo[name]
        if info["flops"]:
            row = matmuls.setdefault(info["dot"], {"seconds": 0.0, "flops": 0.0, "count": 0})
            row["flops"] += info["flops"] * runs[name]
        else:
            row = others.setdefault(_group(info), {"seconds": 0.0, "count": 0})
        row["seconds"] += s
        row["count"] += round(runs[name])
    matmul_rows = []
    for dot, row in sorted(matmuls.items(), key=lambda kv: -kv[1]["seconds"]):
        rate = row["flops"] / row["seconds"] if row["seconds"] > 0 else float("inf")
        matmul_rows.append({"dot": dot, **row, "flops_per_s": rate,
                            "async": rate > async_above})
    timed = [r for r in matmul_rows if not r["async"]]
    mm_s = sum(r["seconds"] for r in timed)
    mm_flops = sum(r["flops"] for r in timed)
    other_s = sum(r["seconds"] for r in others.values())
    slowest = sorted(per_call.items(), key=lambda kv: -kv[1])[:top]
    return {
        "calls": calls, "counted_calls": counted, "trace_file": trace_file, "timings": timings,
        "op_seconds": sum(per_call.values()),
        "matmul_seconds": mm_s, "matmul_flops": mm_flops,
        "matmul_flops_per_s": mm_flops / mm_s if mm_s > 0 else 0.0,
        "async_matmul_flops": sum(r["flops"] for r in matmul_rows if r["async"]),
        "other_seconds": other_s, "matmuls": matmul_rows,
        "others": [{"op": k, **v} for k, v in sorted(others.items(),
                                                      key=lambda kv: -kv[1]["seconds"])],
        "slowest": [{"name": n, "seconds": t, "shape": list(hlo[n]["shape"]),
                     "op": _group(hlo[n]), "flops": hlo[n]["flops"] * runs[n]}
                    for n, t in slowest],
    }


def summary_lines(s: dict[str, Any], top: int = 12) -> list[str]:
    """The human-readable report of :func:`summarize`."""
    ms = 1e3
    lines = [
        f"profile: {s['calls']} traced calls; per call, op time summed over threads "
        f"{s['op_seconds'] * ms:.1f} ms",
        f"  matmuls          {s['matmul_seconds'] * ms:9.1f} ms  "
        f"{s['matmul_flops'] / 1e9:8.2f} GFLOP  {s['matmul_flops_per_s'] / 1e9:7.1f} GFLOP/s",
        f"  other ops        {s['other_seconds'] * ms:9.1f} ms",
    ]
    if s["timings"]:
        lines.append("  traced calls     " + ", ".join(
            f"{t['seconds']:.3f} s" + (f" ({t['page_faults']:,.0f} page faults)"
                                       if t["page_faults"] else "") for t in s["timings"]))
        counted = s.get("counted_calls", list(range(s["calls"])))
        faulty = [i for i, t in enumerate(s["timings"])
                  if t["page_faults"] > FAULTY_CALL_PAGES]
        if faulty and len(counted) < s["calls"]:
            lines.append(f"  counted          calls {_ordinals(counted)} of {s['calls']}: call "
                         f"{_ordinals(faulty)} wrote into fresh heap pages (> "
                         f"{FAULTY_CALL_PAGES:,} page faults), which makes ops look slower "
                         "than they are")
        elif faulty:
            lines.append("  (every call wrote into fresh heap pages: its ops look slower than "
                         "they are; trace again for a clean profile)")
    if s["async_matmul_flops"]:
        lines.append(f"  async matmuls    {s['async_matmul_flops'] / 1e9:8.2f} GFLOP whose events "
                     "time only their dispatch (Eigen's thread pool), not counted above")
    lines.append("  matmuls by shape ([out] = [lhs] · [rhs]; ms per call, GFLOP/s):")
    for r in s["matmuls"][:top]:
        rate = "async" if r["async"] else f"{r['flops_per_s'] / 1e9:7.1f}"
        lines.append(f"    {r['seconds'] * ms:8.2f} ms ×{r['count']:<3d} {rate:>7}  {r['dot']}")
    lines.append("  other ops by JAX operation (ms per call):")
    for r in s["others"][:top]:
        lines.append(f"    {r['seconds'] * ms:8.2f} ms ×{r['count']:<3d} {r['op']}")
    lines.append("  slowest single ops:")
    for r in s["slowest"][:top]:
        lines.append(f"    {r['seconds'] * ms:8.2f} ms  {r['name']} {r['shape']} {r['op']}")
    return lines


def _ordinals(calls: list[int]) -> str:
    """[0, 2] → "1, 3" (calls counted from 1, as the report prints them)."""
    return ", ".join(str(i + 1) for i in calls)


def write_profile_files(out_dir: str, hlo_text: str, calls: int,
                        timings: list[dict[str, float]] | None = None) -> None:
    """The compiled module's HLO, the number of traced calls and their timings (wall seconds and
    page faults, when known), beside a trace in ``out_dir`` (what :func:`summarize_dir` reads
    back)."""
    paths.write_text(paths.join(out_dir, HLO_FILE), hlo_text)
    paths.write_text(paths.join(out_dir, META_FILE),
                     json.dumps({"calls": calls, "timings": timings or []}) + "\n")


def summarize_dir(out_dir: str, *, top: int = 15) -> dict[str, Any]:
    """:func:`summarize` of the newest Perfetto trace under ``out_dir`` (local or a bucket), with
    the HLO and call count :func:`write_profile_files` left there. A folder without them raises
    ``FileNotFoundError`` naming what is missing."""
    hlo_file, meta_file = paths.join(out_dir, HLO_FILE), paths.join(out_dir, META_FILE)
    traces = paths.glob_files(os.path.join(paths.as_str(out_dir), "**", "*.trace.json.gz"))
    missing = [str(f) for f in (hlo_file, meta_file) if not paths.exists(f)]
    if not traces or missing:
        what = ", ".join(missing + ([] if traces else ["a *.trace.json.gz under it"]))
        raise FileNotFoundError(f"{out_dir} is not a profile folder written by latentlm "
                                f"(train.profile_start_step or bench train --profile): no {what}")
    meta = json.loads(paths.read_text(meta_file))
    return summarize(traces[-1], paths.read_text(hlo_file), int(meta["calls"]), top=top,
                     timings=meta.get("timings") or None)
