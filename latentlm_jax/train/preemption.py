"""When to save out of schedule — on SIGTERM or every ``checkpoint.every_minutes`` — agreed by
every process, so a pod saves one step everywhere and exits 0 (docs/preemption.md).

A preemption notice (SIGTERM) reaches one host, several, or all, at different steps; clocks and
step timings differ between hosts. If each process acted on its own signal or its own clock, a pod
would save different steps, or one host would enter the checkpoint's collectives alone and hang.

Multi-process runs therefore agree through the JAX coordination service (the key-value store
``jax.distributed`` already runs; Orbax's ``ContinuousCheckpointingPolicy`` shares its time
decision the same way). Every ``checkpoint.agree_every_steps`` steps, at the same step on every
process:

- a process that got SIGTERM posts ``<run>/stop/<process>`` (once, at the next step);
- process 0 decides: stop if it got SIGTERM or any stop key exists, else save if its own clock
  says ``every_minutes`` passed since the last save; it writes the decision to
  ``<run>/at/<epoch>/<step>``;
- every other process reads that key (blocking), so all act on process 0's decision at that step.

Why not the alternatives:

- JAX's preemption sync manager (``multihost_utils.reached_preemption_sync_point``, behind Orbax's
  ``CheckpointManager.reached_preemption``) agrees on SIGTERM alone and carries no time decision.
  Its sync point is "largest step any host last reported + 1": a notice that arrives before the
  first call (during restore or compilation of a resumed run) fixes the point at step 1, which a
  run resumed at step 500 never reaches. It is one-shot per process (a fixed barrier name) and
  polls for the signal once a second. Its C++ SIGTERM handler, which jax.distributed installs,
  is replaced by ours while the loop runs; a notice it caught before that is read from the
  coordination service at the first checks (``JAX_NOTICE_KEY``).
- An all-reduced flag on the devices (``process_allgather`` / a psum) queues behind the train
  steps: each check waits for the device to finish every step dispatched so far, so the host no
  longer prepares the next batch while the device computes. The key-value round trips here run on
  the host while the device works (under a millisecond per check on loopback; docs/preemption.md).

Single-process runs talk to nobody: SIGTERM stops at the next step, as it always did, and the
per-step cost is an attribute check (plus a clock read when ``every_minutes`` is on).
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import ml_collections as mlc
from jax.errors import JaxRuntimeError


class Decision(NamedTuple):
    """What every process does after a step: ``save`` a checkpoint, and ``stop`` after it."""

    save: bool = False
    stop: bool = False


CONTINUE, SAVE, STOP = Decision(), Decision(save=True), Decision(save=True, stop=True)
_CODES = {"none": CONTINUE, "save": SAVE, "stop": STOP}
_NAMES = {v: k for k, v in _CODES.items()}

# A process other than 0 waits this long for process 0's decision before failing (process 0 may
# be writing metrics, evaluating or waiting on a save; the train step's own collectives would
# hang just as long if it were gone).
DECISION_TIMEOUT_S = 3600
_runs = itertools.count()  # one key prefix per train() call; every process counts alike
# The key JAX's preemption service (XLA's PreemptionSyncManager) writes when its own SIGTERM
# handler, installed by jax.distributed.initialize, caught a signal: that handler is the one in
# place until the training loop installs ours. Its listener polls once a second, so process 0
# looks for the key during the loop's first seconds.
JAX_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"
NOTICE_WINDOW_S = 5.0


class KeyValueClient(Protocol):
    """The part of ``jax._src.distributed.global_state.client`` this module uses."""

    def key_value_set(self, key: str, value: str) -> None: ...
    def blocking_key_value_get(self, key: str, timeout_in_ms: int) -> str: ...
    def key_value_dir_get(self, key: str) -> list[tuple[str, str]]: ...
    def key_value_try_get(self, key: str) -> str: ...
    def key_value_delete(self, key: str) -> None: ...


class SignalFlag:
    """Turns SIGTERM into a flag (this process only) while the context is open."""

    def __init__(self):
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> SignalFlag:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        except ValueError:  # not the main thread
            pass
        return self

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._installed:
            # None: the previous handler was not set from Python (e.g. the C++ one of JAX's
            # preemption service), which Python cannot reinstall; the default is the honest
            # replacement.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(signal.SIGTERM, previous)
            self._installed = False


class Agreement:
    """Decides, after each step, whether to save and whether to stop — the same on every process.

    ``flag`` is this process's SIGTERM flag (anything with ``.requested``). ``client`` is the
    coordination service's key-value client; None for a single process (no communication).
    ``clock`` returns seconds (monotonic); only process 0's is read in a multi-process run.
    The trainer calls :meth:`decide` after every step and :meth:`saved` after every save (all
    processes save the same steps, so the epochs below advance alike).
    """

    def __init__(self, flag: Any, *, every_minutes: float = 0.0, check_every: int = 1,
                 client: KeyValueClient | None = None, process_index: int = 0,
                 clock: Callable[[], float] = time.monotonic, prefix: str = "latentlm/agree/0",
                 timeout_s: float = DECISION_TIMEOUT_S):
        self._flag = flag
        self._every_s = every_minutes * 60.0
        self._check_every = check_every
        self._client = client
        self._primary = process_index == 0
        self._stop_key = f"{prefix}/stop/{process_index}"
        self._prefix = prefix
        self._clock = clock
        self._timeout_ms = int(timeout_s * 1000)
        self._last_save = clock()
        self._notice_until = self._last_save + NOTICE_WINDOW_S
        self._posted = False
        self._noticed_before_loop = False
        self._epoch = 0  # saves so far; decision keys live under at/<epoch>/ until two saves on

    def decide(self, step: int) -> Decision:
        if self._client is None:
            if self._flag.requested:
                return STOP
            return SAVE if self._every_s and self._time_due() else CONTINUE
        if self._flag.requested and not self._posted:  # tell process 0 at once
            self._client.key_value_set(self._stop_key, "1")
            self._posted = True
        if step % self._check_every:
            return CONTINUE
        return self._agree(step)

    def _time_due(self) -> bool:
        return self._clock() - self._last_save >= self._every_s

    def _agree(self, step: int) -> Decision:
        client = self._client
        key = f"{self._prefix}/at/{self._epoch}/{step}"
        if self._primary:
            if (self._flag.requested or self._jax_notice()
                    or client.key_value_dir_get(f"{self._prefix}/stop/")):
                decision = STOP
            else:
                decision = SAVE if self._every_s and self._time_due() else CONTINUE
            client.key_value_set(key, _NAMES[decision])
            return decision
        return _CODES[client.blocking_key_value_get(key, self._timeout_ms)]

    def _jax_notice(self) -> bool:
        """Whether JAX's SIGTERM handler caught a signal before the loop (on any process)."""
        if self._clock() >= self._notice_until:
            return False
        try:
            self._client.key_value_try_get(JAX_NOTICE_KEY)
        except JaxRuntimeError as e:
            if "NOT_FOUND" in str(e):
                return False
            raise
        self._noticed_before_loop = True
        return True

    def saved(self, step: int) -> None:
        """Called after every save: restarts the every_minutes clock and drops old decisions."""
        del step
        self._last_save = self._clock()
        if self._client is not None and self._primary and self._epoch >= 1:
            # Every process read the decisions of epoch - 1 before the save that ended it, and
            # all have entered this save (Orbax's save starts with a barrier across processes).
            self._client.key_value_delete(f"{self._prefix}/at/{self._epoch - 1}")
        self._epoch += 1

    def close(self) -> None:
        """After the run's last save: process 0 drops this run's keys (every process has read
        its decisions before entering that save)."""
        if self._client is not None and self._primary:
            self._client.key_value_delete(self._prefix)

    def reason(self) -> str:
        """Why a stop was decided, for the console."""
        if self._flag.requested:
            return "SIGTERM"
        if self._noticed_before_loop:
            return "SIGTERM before the training loop"
        return "SIGTERM on another process"


def agreement(config: mlc.ConfigDict, flag: SignalFlag) -> Agreement:
    """The agreement for this run: key-value rounds when jax.distributed joins several processes,
    local decisions otherwise."""
    k = config.checkpoint
    client = None
    if jax.process_count() > 1:
        from jax._src import distributed  # the client has no public accessor; Orbax uses it too

        client = distributed.global_state.client
        if client is None:
            raise RuntimeError("several JAX processes but no jax.distributed client; the "
                               "processes cannot agree when to save")
    return Agreement(flag, every_minutes=k.every_minutes, check_every=k.agree_every_steps,
                     client=client, process_index=jax.process_index(),
                     prefix=f"latentlm/agree/{next(_runs)}")
