"""Saving on SIGTERM and every_minutes, agreed by every process (train/preemption.py)."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from jax.errors import JaxRuntimeError

from latentlm_jax.config.loading import ConfigError
from latentlm_jax.config.validate import validate
from latentlm_jax.train.preemption import (
    CONTINUE,
    JAX_NOTICE_KEY,
    SAVE,
    STOP,
    Agreement,
    SignalFlag,
)
from tests.helpers import LM_TINY, latentlm_command, multiprocess_env, tiny_lm_config, xla_flags


class Flag:
    def __init__(self, requested: bool = False):
        self.requested = requested


class FakeCoordinator:
    """An in-memory stand-in for the coordination service's key-value store, shared by threads
    that play the processes: set refuses to overwrite, get blocks, delete drops a directory."""

    def __init__(self):
        self.store: dict[str, str] = {}
        self.most_keys = 0
        self.try_gets = 0
        self._cv = threading.Condition()

    def key_value_set(self, key, value):
        with self._cv:
            assert key not in self.store, f"{key} set twice"
            self.store[key] = value
            self.most_keys = max(self.most_keys, len(self.store))
            self._cv.notify_all()

    def blocking_key_value_get(self, key, timeout_in_ms):
        with self._cv:
            assert self._cv.wait_for(lambda: key in self.store, timeout_in_ms / 1000), key
            return self.store[key]

    def key_value_try_get(self, key):
        with self._cv:
            self.try_gets += 1
            if key not in self.store:
                raise JaxRuntimeError(f"NOT_FOUND: Config key {key} not found.")
            return self.store[key]

    def key_value_dir_get(self, key):
        with self._cv:
            return [(k, v) for k, v in self.store.items() if k.startswith(key)]

    def key_value_delete(self, key):
        with self._cv:
            for k in [k for k in self.store if k == key or k.startswith(key + "/")]:
                del self.store[k]


# ------------------------------------------------------------------------------ one process
def test_signal_flag_catches_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with SignalFlag() as flag:
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while not flag.requested and time.time() < deadline:
            time.sleep(0.01)
        assert flag.requested
    assert signal.getsignal(signal.SIGTERM) == before


def test_single_process_stops_at_the_next_step_after_sigterm():
    flag = Flag()
    agreed = Agreement(flag)
    assert [agreed.decide(s) for s in (1, 2)] == [CONTINUE, CONTINUE]
    flag.requested = True
    assert agreed.decide(3) == STOP
    assert agreed.reason() == "SIGTERM"


def test_single_process_every_minutes_follows_the_clock_from_the_last_save():
    now = [100.0]
    agreed = Agreement(Flag(), every_minutes=0.5, clock=lambda: now[0])
    now[0] += 29.0
    assert agreed.decide(1) == CONTINUE
    now[0] += 1.0
    assert agreed.decide(2) == SAVE
    agreed.saved(2)  # the clock restarts at any save
    now[0] += 29.9
    assert agreed.decide(3) == CONTINUE
    now[0] += 0.1
    assert agreed.decide(4) == SAVE


def test_every_minutes_off_never_saves():
    agreed = Agreement(Flag(), every_minutes=0.0, clock=lambda: 1e12 * time.time())
    assert {agreed.decide(s) for s in range(1, 50)} == {CONTINUE}


@pytest.mark.parametrize(("field", "value"), [("every_minutes", -1.0),
                                              ("agree_every_steps", 0)])
def test_config_rejects_bad_values(field, value):
    c = tiny_lm_config()
    c.checkpoint[field] = value
    with pytest.raises(ConfigError, match=f"checkpoint.{field}"):
        validate(c)


# ------------------------------------------------------------------------------ several processes
def _play(processes: int, *, check_every: int, sigterm: dict[int, int], clocks, every_minutes,
          steps: int = 60, store: dict[str, str] | None = None):
    """Threads play ``processes`` processes running the trainer's decide/saved calls; process p
    gets SIGTERM before step ``sigterm[p]``. Returns each process's {step: decision} and the
    store."""
    kv = FakeCoordinator()
    kv.store.update(store or {})
    save_barrier = threading.Barrier(processes)  # Orbax's save starts with one across processes
    logs: list[dict[int, object]] = [{} for _ in range(processes)]
    errors: list[BaseException] = []

    def run(p: int):
        try:
            flag = Flag()
            agreed = Agreement(flag, every_minutes=every_minutes, check_every=check_every,
                               client=kv, process_index=p, clock=clocks[p], timeout_s=20,
                               prefix="run")
            for step in range(1, steps + 1):
                clocks[p].step = step
                if sigterm.get(p) == step:
                    flag.requested = True
                decision = agreed.decide(step)
                logs[p][step] = decision
                if decision.save or step == steps:  # the trainer saves the last step too
                    save_barrier.wait(20)
                    agreed.saved(step)
                if decision.stop or step == steps:
                    agreed.close()
                    break
                time.sleep(0.001 * (p + 1))  # processes run at different speeds
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return logs, kv


class StepClock:
    """Seconds as a function of the step the process is at: ``seconds_per_step · step``."""

    def __init__(self, seconds_per_step: float):
        self.seconds_per_step, self.step = seconds_per_step, 0

    def __call__(self) -> float:
        return self.seconds_per_step * self.step


def test_processes_agree_on_the_step_when_only_one_gets_sigterm():
    logs, kv = _play(3, check_every=2, sigterm={2: 7}, clocks=[StepClock(0)] * 3,
                     every_minutes=0.0)
    assert logs[0] == logs[1] == logs[2]
    stops = [s for s, d in logs[0].items() if d == STOP]
    assert len(stops) == 1 and stops[0] == max(logs[0])
    assert stops[0] % 2 == 0 and stops[0] >= 8  # a check step at or after the signal
    assert all(d == CONTINUE for s, d in logs[0].items() if s != stops[0])
    assert kv.store == {}  # process 0 dropped the run's keys


def test_processes_follow_process_0s_clock_for_every_minutes():
    # Process 0's clock says 10 s per step, the others' clocks never move: with every_minutes
    # = 0.5 only process 0 would save on its own, every 3 steps, at check steps (multiples of 2).
    clocks = [StepClock(10.0), StepClock(0.0), StepClock(0.0)]
    logs, kv = _play(3, check_every=2, sigterm={}, clocks=clocks, every_minutes=0.5, steps=40)
    assert logs[0] == logs[1] == logs[2]
    saves = [s for s, d in logs[0].items() if d == SAVE]
    expected, last = [], 0
    for s in range(2, 41, 2):
        if 10.0 * (s - last) >= 30.0:
            expected.append(s)
            last = s
    assert saves == expected == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    assert kv.try_gets == 0  # process 0's clock is past the window for JAX's notice at step 2
    # Old decisions are dropped after saves: the store holds a few save intervals, not the run.
    assert kv.most_keys <= 3 * 2 and kv.store == {}


def test_a_sigterm_jax_caught_before_the_loop_stops_everyone_at_the_first_check():
    # jax.distributed's own handler holds SIGTERM until the loop starts; it writes this key.
    logs, _ = _play(2, check_every=3, sigterm={}, clocks=[StepClock(0)] * 2, every_minutes=0.0,
                    store={JAX_NOTICE_KEY: "2026-01-01T00:00:00Z"})
    assert logs[0] == logs[1] == {1: CONTINUE, 2: CONTINUE, 3: STOP}


def test_sigterm_on_process_0_stops_everyone():
    logs, _ = _play(2, check_every=1, sigterm={0: 5}, clocks=[StepClock(0)] * 2,
                    every_minutes=0.0)
    assert logs[0] == logs[1]
    assert max(logs[0]) == 5 and logs[0][5] == STOP


# ------------------------------------------------------------------------------ real processes
MP_ARGS = ["--config", LM_TINY, "--config.train.log_every=1", "--config.model.num_layers=1",
           "--config.model.emb_dim=32", "--config.model.mlp_dim=64", "--config.model.head_dim=8",
           "--config.data.seq_len=32", "--config.train.global_batch_size=4",
           "--config.metrics.peak_tflops_per_device=1", "--config.checkpoint.every_steps=100000",
           "--config.mesh.ici.data=-1", "--config.train.num_steps=100000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, tmp_path, name: str, *args: str) -> list[subprocess.Popen]:
    """Two JAX processes with one CPU device each, joined like launch/local_cpu.sh joins them;
    we keep their pids so that SIGTERM can reach one of them alone. They share a compilation
    cache, so a second run of the same train step skips compiling it."""
    port = _free_port()
    procs = []
    for i in range(2):
        env = multiprocess_env(XLA_FLAGS=xla_flags(1),
                               LATENTLM_COORDINATOR=f"127.0.0.1:{port}",
                               LATENTLM_NUM_PROCESSES="2", LATENTLM_PROCESS_ID=str(i),
                               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
        with open(tmp_path / f"{name}{i}.log", "w") as out:  # the child keeps its own copy
            procs.append(subprocess.Popen(
                latentlm_command("train", "--workdir", str(workdir), *MP_ARGS, *args),
                stdout=out, stderr=subprocess.STDOUT, env=env))
    return procs


def _sigterm_after(procs, tmp_path, name: str, workdir, step: int, which: int) -> str:
    """Once process 0 logged ``step``, SIGTERM process ``which`` alone; both must exit 0.
    Returns process 0's output."""
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    try:
        while not (metrics.exists() and _logged_steps(workdir)[-1:] >= [step]):
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                (tmp_path / f"{name}0.log").read_text()[-3000:]
            time.sleep(0.05)
        procs[which].send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=180)
    finally:
        for p in procs:  # never leave a process behind when the test fails
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"{name}{i}.log").read_text() for i in range(2)]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return logs[0]


def _logged_steps(workdir) -> list[int]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["step"] for ln in lines if ln.endswith("}")]


def _stop_step(out: str, reason: str) -> int:
    line = [ln for ln in out.splitlines() if "saved checkpoint at step" in ln]
    assert line and line[0].startswith(f"{reason}: saved checkpoint at step"), out[-3000:]
    return int(line[0].split("step ")[1].split(";")[0])


def _saved_steps(workdir) -> list[int]:
    return sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())


def _saved_by_both(workdir, step: int) -> bool:
    names = set(os.listdir(workdir / "checkpoints" / str(step) / "data"))
    return {"process_0-of-2.json", "process_1-of-2.json"} <= names


@pytest.mark.slow
@pytest.mark.multidevice
def test_two_processes_save_the_same_step_when_one_gets_sigterm(tmp_path):
    workdir = tmp_path / "w"
    procs = _start(workdir, tmp_path, "run")
    # Process 1 alone gets SIGTERM: process 0 learns it through the agreement.
    step = _stop_step(_sigterm_after(procs, tmp_path, "run", workdir, 3, which=1),
                      "SIGTERM on another process")
    assert step >= 3
    assert _saved_steps(workdir) == [step]
    assert _saved_by_both(workdir, step)

    # Resumed from there with every_minutes ≈ 0: a save after every step, the same steps on
    # both processes; then process 0 alone gets SIGTERM.
    procs = _start(workdir, tmp_path, "resume", "--config.checkpoint.every_minutes=1e-9",
                   "--config.checkpoint.keep=100")
    out = _sigterm_after(procs, tmp_path, "resume", workdir, step + 2, which=0)
    assert f"Resuming from checkpoint at step {step}" in out
    last = _stop_step(out, "SIGTERM")
    assert last >= step + 2
    assert _saved_steps(workdir) == list(range(step, last + 1))
    assert all(_saved_by_both(workdir, s) for s in range(step, last + 1))
    logged = _logged_steps(workdir)
    assert logged[logged.index(step) + 1:] == list(range(step + 1, last + 1))
