"""latentlm_jax/host_malloc.py: freed host memory is kept for the next execution on a CPU host."""

import json
import os
import platform
import shutil
import subprocess
import sys

import jax  # noqa: F401  (imported before the tests below, as in any process that runs JAX)
import numpy as np
import pytest

from latentlm_jax import host_malloc
from tests.helpers import LM_TINY, latentlm_command, one_device_env

# Runs a jitted function whose temporaries are one ~112 MB block 16 times, after (or without)
# retain_freed_memory, and reports the minor page faults of each run after the first.
_PROBE = """
import json, resource, sys
from latentlm_jax.host_malloc import retain_freed_memory
applied = retain_freed_memory()
import jax, jax.numpy as jnp
rows = 32_768  # [rows, 128] float32: 16 MB per intermediate, 8 of them live at the end
def f(x, w):
    ys = [x]
    for _ in range(8):
        ys.append(jnp.tanh(ys[-1] @ w))
    return sum(y * (i + 1) for i, y in enumerate(ys[1:]))
spec = [jax.ShapeDtypeStruct((rows, 128), jnp.float32),
        jax.ShapeDtypeStruct((128, 128), jnp.float32)]
fn = jax.jit(f).lower(*spec).compile()
temp = fn.memory_analysis().temp_size_in_bytes
x = jnp.linspace(-1.0, 1.0, rows * 128, dtype=jnp.float32).reshape(rows, 128)
w = jnp.linspace(-0.1, 0.1, 128 * 128, dtype=jnp.float32).reshape(128, 128)
sums, faults = [], []
for _ in range(16):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = fn(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    sums.append(float(out.sum()))
    del out  # freed, like a step's temporaries: the next run may reuse the block
from latentlm_jax.host_malloc import retained
assert retained() == applied
print(json.dumps({"applied": applied, "faults": faults[1:], "temp_pages": temp // 4096,
                  "out_pages": rows * 128 * 4 // 4096, "sums": sums}))
"""

glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's")


def _probe(choice: str) -> dict:
    env = dict(one_device_env(), LATENTLM_HOST_MALLOC=choice)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
@pytest.mark.slow
def test_later_executions_reuse_freed_temporaries_without_page_faults():
    retained, system = _probe("retain"), _probe("system")
    assert retained["applied"] and not system["applied"]
    pages = retained["temp_pages"]
    assert pages > 20_000  # the probe's temporaries are one big block (above mmap's 32 MB)
    # glibc's default maps the block afresh and faults every page of it back in, every run ...
    assert all(f >= pages for f in system["faults"]), system
    # ... kept, the runs reuse blocks that are already mapped. Python's own allocations share the
    # heap and now and then split a freed block, so the heap grows a few times (measured: 0-2 of
    # the 15 runs fault their temporaries; the demo's train loop: none after its first 50
    # steps, docs/benchmarks.md finding 8); most runs fault nothing but perhaps their output.
    clean = [f <= retained["out_pages"] + 1024 for f in retained["faults"]]
    assert sum(clean) >= 10, retained
    assert sum(retained["faults"]) < 0.4 * sum(system["faults"]), retained
    # how memory is allocated never changes a result
    assert len(set(retained["sums"] + system["sums"])) == 1


@pytest.mark.parametrize("value, first_is_cpu", [
    ("cpu", True), ("CPU", True), ("cpu,tpu", True), (" cpu ", True),
    ("tpu,cpu", False), ("cuda", False), ("", False), (None, False)])
def test_host_is_the_device_reads_jax_platforms(value, first_is_cpu):
    environ = {} if value is None else {"JAX_PLATFORMS": value}
    assert host_malloc.host_is_the_device(environ) is first_is_cpu


def test_nothing_changes_where_it_cannot_or_must_not_apply():
    # this test process has imported JAX already: its threads may own arenas
    assert "jax" in sys.modules
    assert not host_malloc.retain_freed_memory({"JAX_PLATFORMS": "cpu"})
    assert not host_malloc.retain_freed_memory({"JAX_PLATFORMS": "cpu",
                                                "LATENTLM_HOST_MALLOC": "system"})
    assert not host_malloc.retain_freed_memory({})  # an accelerator host
    assert not host_malloc.retained()


_UNKNOWN = ("LATENTLM_HOST_MALLOC='arena': expected one of auto, jemalloc, tcmalloc, retain, "
            "system or the path of a jemalloc or tcmalloc library")


def test_an_unknown_choice_is_an_error():
    with pytest.raises(ValueError, match=_UNKNOWN):
        host_malloc.retain_freed_memory({"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": "arena"})
    with pytest.raises(ValueError, match=_UNKNOWN):
        host_malloc.host_malloc_environ({"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": "arena"})


def _finder(**installed: str):
    """A find_library that knows only ``installed`` (name → what the dynamic linker loads)."""
    return lambda name: installed.get(name)


_JEMALLOC = {"jemalloc": "libjemalloc.so.2"}
_TCMALLOC = {"tcmalloc_minimal": "libtcmalloc_minimal.so.4"}


@pytest.mark.parametrize("choice, installed, expected", [
    (None, {**_JEMALLOC, **_TCMALLOC}, ("jemalloc", "libjemalloc.so.2")),  # auto: jemalloc first
    ("auto", _TCMALLOC, ("tcmalloc", "libtcmalloc_minimal.so.4")),
    ("AUTO", {"tcmalloc": "libtcmalloc.so.4"}, ("tcmalloc", "libtcmalloc.so.4")),
    ("auto", {}, None),  # none installed: glibc, kept (retain)
    ("tcmalloc", {**_JEMALLOC, **_TCMALLOC}, ("tcmalloc", "libtcmalloc_minimal.so.4")),
    ("retain", _JEMALLOC, None),
    ("system", _JEMALLOC, None)])
def test_the_allocator_to_preload_is_found_by_the_dynamic_linker(choice, installed, expected):
    environ = {"JAX_PLATFORMS": "cpu"}
    if choice is not None:
        environ["LATENTLM_HOST_MALLOC"] = choice
    assert host_malloc.allocator_to_preload(environ, find=_finder(**installed)) == expected


_LDCONFIG_P = """\
1234 libs found in cache `/etc/ld.so.cache'
\tlibjemalloc.so.2 (libc6) => /usr/lib/i386-linux-gnu/libjemalloc.so.2
\tlibjemalloc.so.2 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
\tlibtcmalloc_minimal.so.4 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4
\tlibtcmalloc_minimal_debug.so.4 (libc6,x86-64) => /usr/lib/libtcmalloc_minimal_debug.so.4
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
"""


@pytest.mark.parametrize("name, machine, path", [
    ("jemalloc", "x86_64", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),  # not the i386 one
    ("c", "x86_64", "/lib/x86_64-linux-gnu/libc.so.6"),
    ("tcmalloc_minimal", "aarch64", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4"),
    ("tcmalloc_minimal", "x86_64", None),  # only its _debug variant for this ABI
    ("tcmalloc", "x86_64", None)])
def test_libraries_are_looked_up_in_the_dynamic_linkers_cache(name, machine, path):
    assert host_malloc.library_in_linker_cache(name, _LDCONFIG_P, machine) == path


@glibc_linux
def test_the_real_linker_cache_has_the_c_library():
    path = host_malloc.library_in_linker_cache("c")
    assert path is not None and os.path.basename(path) == "libc.so.6" and os.path.exists(path)


def test_no_allocator_is_preloaded_where_it_must_not_be():
    find = _finder(**_JEMALLOC)
    assert host_malloc.allocator_to_preload({}, find=find) is None  # an accelerator host
    assert host_malloc.allocator_to_preload({"JAX_PLATFORMS": "tpu"}, find=find) is None
    # one is preloaded already: ours after the re-execution, or the user's (a TPU VM's tcmalloc)
    for preload in ("libjemalloc.so.2", "/usr/lib/libtcmalloc.so.4 libfoo.so",
                    "a.so:libjemalloc.so"):
        environ = {"JAX_PLATFORMS": "cpu", "LD_PRELOAD": preload}
        assert host_malloc.allocator_to_preload(environ, find=find) is None
        assert host_malloc.preload_environ(environ, find=find) is None
    assert host_malloc.preloaded_allocator({"LD_PRELOAD": "libfoo.so"}) is None


def test_a_named_allocator_that_is_not_installed_is_an_error():
    with pytest.raises(ValueError, match=r"^LATENTLM_HOST_MALLOC=jemalloc: no jemalloc library "
                                         r"found \(Debian/Ubuntu: apt install libjemalloc2\)$"):
        host_malloc.allocator_to_preload(
            {"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": "jemalloc"}, find=_finder(**_TCMALLOC))


def test_a_library_path_is_checked(tmp_path):
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    environ = {"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": str(library)}
    assert host_malloc.allocator_to_preload(environ, find=_finder()) == ("jemalloc", str(library))
    with pytest.raises(ValueError, match="no such file"):
        host_malloc.allocator_to_preload(
            {"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": str(tmp_path / "libjemalloc.so")})
    other = tmp_path / "libmimalloc.so"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="not a jemalloc or tcmalloc library"):
        host_malloc.allocator_to_preload(
            {"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": str(other)})


def test_the_preload_environment_keeps_freed_memory_and_the_users_settings(tmp_path):
    find = _finder(**_JEMALLOC, **_TCMALLOC)
    env = host_malloc.preload_environ({"JAX_PLATFORMS": "cpu", "A": "1"}, find=find)
    assert env == {"JAX_PLATFORMS": "cpu", "A": "1", "LD_PRELOAD": "libjemalloc.so.2",
                   "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
    # first in LD_PRELOAD, before the user's; the user's MALLOC_CONF wins
    env = host_malloc.preload_environ({"JAX_PLATFORMS": "cpu", "LD_PRELOAD": "libfoo.so",
                                       "MALLOC_CONF": "narenas:2"}, find=find)
    assert env["LD_PRELOAD"] == "libjemalloc.so.2 libfoo.so" and env["MALLOC_CONF"] == "narenas:2"
    env = host_malloc.preload_environ({"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": "tcmalloc"},
                                      find=find)
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
    assert env["TCMALLOC_RELEASE_RATE"] == "0" and "MALLOC_CONF" not in env
    # the re-execution's environment: the allocator, not huge pages (glibc's tunable)
    thp = _thp_file(tmp_path, "always [madvise] never")
    virtio = _virtio_devices(tmp_path, ("0x0005", _NOT_REPORTING))
    env = host_malloc.host_malloc_environ({"JAX_PLATFORMS": "cpu"}, find=find, thp_setting=thp,
                                          virtio_devices=virtio)
    assert env["LD_PRELOAD"] == "libjemalloc.so.2" and "GLIBC_TUNABLES" not in env
    assert host_malloc.huge_pages_environ(env, thp_setting=thp, virtio_devices=virtio) is None


@pytest.mark.slow
def test_cli_reports_an_unknown_choice_in_one_line():
    env = dict(one_device_env(), LATENTLM_HOST_MALLOC="arena")
    out = subprocess.run(latentlm_command("describe", "--config", LM_TINY), env=env,
                         capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"latentlm: error: {_UNKNOWN}"]


def _thp_file(tmp_path, setting: str) -> str:
    path = tmp_path / "enabled"
    path.write_text(setting + "\n")
    return str(path)


needs_glibc_2_35 = pytest.mark.skipif(
    host_malloc._glibc_version() < host_malloc._HUGE_PAGES_GLIBC,
    reason="glibc.malloc.hugetlb is glibc 2.35's")


@pytest.mark.parametrize("setting, available", [
    ("always [madvise] never", True), ("[always] madvise never", True),
    ("always madvise [never]", False), (None, False)])
def test_transparent_huge_pages_are_read_from_the_kernel_setting(tmp_path, setting, available):
    path = str(tmp_path / "missing") if setting is None else _thp_file(tmp_path, setting)
    assert host_malloc.transparent_huge_pages_available(path) is available


def _virtio_devices(tmp_path, *devices: tuple[str, str]) -> str:
    """A sysfs-like folder of virtio devices, each (device ID, feature bits) as the kernel prints
    them, e.g. ("0x0005", "0110010...")."""
    root = tmp_path / "virtio"
    root.mkdir()
    for i, (device, features) in enumerate(devices):
        (root / f"virtio{i}").mkdir()
        (root / f"virtio{i}" / "device").write_text(device + "\n")
        (root / f"virtio{i}" / "features").write_text(features + "\n")
    return str(root)


# bit 5 is VIRTIO_BALLOON_F_REPORTING on a balloon (device 5); on a block device (2) it is not
_REPORTING = "0110010100000000000000000000000100000000000000000000000000000000"
_NOT_REPORTING = "0110000100000000000000000000000100000000000000000000000000000000"


@pytest.mark.parametrize("devices, takes_back", [
    ((("0x0005", _REPORTING),), True),
    ((("0x0002", "0010001001100100"), ("0x0005", _REPORTING)), True),
    ((("0x0005", _NOT_REPORTING),), False),
    ((("0x0002", _REPORTING),), False),  # bit 5 of another device means something else
    ((("0x0005", "01100"),), False),  # too few bits printed
    ((("zz", _REPORTING),), False),  # unreadable: not a balloon
    ((), False)])
def test_a_host_that_takes_back_free_memory_is_read_from_sysfs(tmp_path, devices, takes_back):
    root = _virtio_devices(tmp_path, *devices)
    assert host_malloc.host_takes_back_free_memory(root) is takes_back
    assert not host_malloc.host_takes_back_free_memory(str(tmp_path / "no-virtio-bus"))


@needs_glibc_2_35
def test_huge_pages_are_asked_for_with_a_glibc_tunable(tmp_path):
    thp = _thp_file(tmp_path, "always [madvise] never")
    virtio = _virtio_devices(tmp_path, ("0x0005", _NOT_REPORTING))
    env = host_malloc.huge_pages_environ({"JAX_PLATFORMS": "cpu", "A": "1"}, thp_setting=thp,
                                         virtio_devices=virtio)
    assert env == {"JAX_PLATFORMS": "cpu", "A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    # other tunables are kept
    env = host_malloc.huge_pages_environ(
        {"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, thp_setting=thp,
        virtio_devices=virtio)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert host_malloc.huge_pages(env)
    assert not host_malloc.huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})


@needs_glibc_2_35
@pytest.mark.parametrize("environ, setting", [
    ({"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "[madvise]"),  # user's
    ({"JAX_PLATFORMS": "cpu", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "[madvise]"),  # done
    ({"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": "system"}, "[madvise]"),
    ({"JAX_PLATFORMS": "cpu", "LATENTLM_HOST_MALLOC": "arena"}, "[madvise]"),  # retain's error
    ({"JAX_PLATFORMS": "tpu"}, "[madvise]"),  # an accelerator host
    ({"JAX_PLATFORMS": "cpu"}, "always madvise [never]")])
def test_huge_pages_are_not_asked_for_where_they_must_not_be(tmp_path, environ, setting):
    thp = _thp_file(tmp_path, setting)
    virtio = _virtio_devices(tmp_path, ("0x0005", _NOT_REPORTING))
    assert host_malloc.huge_pages_environ(environ, thp_setting=thp,
                                          virtio_devices=virtio) is None


@needs_glibc_2_35
def test_huge_pages_are_not_asked_for_where_the_host_takes_back_free_memory(tmp_path):
    thp = _thp_file(tmp_path, "always [madvise] never")
    virtio = _virtio_devices(tmp_path, ("0x0005", _REPORTING))
    assert host_malloc.huge_pages_environ({"JAX_PLATFORMS": "cpu"}, thp_setting=thp,
                                          virtio_devices=virtio) is None
    # the user's own tunable still wins: a process started with it has huge pages
    assert host_malloc.describe({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
                                virtio).endswith(", huge pages")


def test_the_description_says_why_there_are_no_huge_pages(tmp_path, monkeypatch):
    reporting = _virtio_devices(tmp_path, ("0x0005", _REPORTING))
    monkeypatch.setattr(host_malloc, "active_allocator", lambda: None)  # glibc's malloc
    monkeypatch.setattr(host_malloc, "_retained", True)
    assert host_malloc.describe({}, reporting) == (
        "retain (no huge pages: this VM's host takes back free memory, so they map slowly)")
    assert host_malloc.describe({}, str(tmp_path / "none")) == "retain"
    monkeypatch.setattr(host_malloc, "_retained", False)
    assert host_malloc.describe({}, reporting) == "system"


def test_the_description_names_a_preloaded_allocator(monkeypatch):
    monkeypatch.setattr(host_malloc, "active_allocator", lambda: "jemalloc")
    assert host_malloc.describe({"LD_PRELOAD": "libfoo.so libjemalloc.so.2"}) == (
        "jemalloc (libjemalloc.so.2)")
    assert host_malloc.describe({}) == "jemalloc"  # linked in, not preloaded


def _run_reexecuting(probe: str, env: dict) -> dict:
    """Runs ``probe`` (which prints "start", re-executes itself, then prints a JSON line) with an
    argument; checks that it ran twice with the same command line; returns the JSON."""
    out = subprocess.run([sys.executable, "-c", probe, "an-argument"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[:2] == ["start", "start"]  # once before and once after the re-execution
    result = json.loads(lines[-1])
    assert result["argv"] == ["an-argument"]  # the same command line
    return result


@glibc_linux
@needs_glibc_2_35
@pytest.mark.skipif(not host_malloc.transparent_huge_pages_available(),
                    reason="this kernel gives no transparent huge pages")
@pytest.mark.slow
def test_the_command_reexecutes_itself_once_with_its_heap_on_huge_pages():
    # the re-executed program runs a jitted function with ~60 MB of temporaries, then reports
    # its tunables and how much of its memory is on huge pages
    probe = (
        "import sys\n"
        "from latentlm_jax.host_malloc import reexec_with_host_malloc, retain_freed_memory\n"
        "print('start', flush=True)\n"
        # as on a host that keeps the memory it gives (on one that takes it back, huge pages
        # are not asked for: the test above)
        "reexec_with_host_malloc(virtio_devices='/no/virtio/bus')\n"
        "retain_freed_memory()\n"
        "import json, os, jax, jax.numpy as jnp\n"
        "x = jnp.ones((4096, 1024), jnp.float32)\n"
        "s = float(jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(x))\n"
        "smaps = open('/proc/self/smaps_rollup').read().split()\n"
        "huge_kb = int(smaps[smaps.index('AnonHugePages:') + 1])\n"
        "print(json.dumps({'tunables': os.environ.get('GLIBC_TUNABLES'), 'huge_kb': huge_kb,\n"
        "                  'sum': s, 'argv': sys.argv[1:]}))\n")
    env = {k: v for k, v in one_device_env().items() if k != "GLIBC_TUNABLES"}
    env["LATENTLM_HOST_MALLOC"] = "retain"  # glibc's heap, even where jemalloc is installed
    result = _run_reexecuting(probe, env)
    assert result["tunables"] == "glibc.malloc.hugetlb=1"
    assert result["huge_kb"] >= 2048, result  # at least one 2 MB page
    assert result["sum"] == pytest.approx(4096 * 4096 * float(np.tanh(1024.0)))


@glibc_linux
@pytest.mark.skipif(shutil.which("gcc") is None, reason="builds a stand-in library with gcc")
@pytest.mark.slow
def test_the_command_reexecutes_itself_once_with_the_allocator_preloaded(tmp_path):
    # A stand-in for jemalloc: a library of that name that defines jemalloc's `mallctl` (and
    # leaves malloc to glibc), so the test needs no allocator installed.
    source = tmp_path / "stand_in.c"
    source.write_text("int mallctl(const char *n, void *o, void *ol, void *nv, unsigned long nl)"
                      " { return 0; }\n")
    library = tmp_path / "libjemalloc.so.2"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True,
                   timeout=120)
    probe = (
        "import json, os, sys\n"
        "from latentlm_jax import host_malloc\n"
        "print('start', flush=True)\n"
        "host_malloc.reexec_with_host_malloc()\n"
        "applied = host_malloc.retain_freed_memory()\n"
        "import jax, jax.numpy as jnp\n"
        "s = float(jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((256, 64))))\n"
        "print(json.dumps({'preload': os.environ.get('LD_PRELOAD'), 'retain': applied,\n"
        "                  'conf': os.environ.get('MALLOC_CONF'), 'sum': s, 'argv': sys.argv[1:],\n"
        "                  'active': host_malloc.active_allocator(),\n"
        "                  'describe': host_malloc.describe()}))\n")
    env = {k: v for k, v in one_device_env().items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    env["LATENTLM_HOST_MALLOC"] = str(library)
    result = _run_reexecuting(probe, env)
    assert result["preload"] == str(library) and result["active"] == "jemalloc"
    assert result["conf"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"
    assert result["retain"] is False  # glibc's mallopt is not this process's malloc
    assert result["describe"] == f"jemalloc ({library})"
    assert result["sum"] == pytest.approx(256 * 256 * float(np.tanh(64.0)))
