"""launch/tpu_pod.sh and tpu_multislice.sh against a fake ``gcloud`` that plays a pod of hosts.

The fake runs each ``ssh --command`` in every host's home directory (HOME=hosts/<i>) and copies
``scp`` files into each, so the tests check what lands on the hosts and what runs there.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import textwrap

import pytest

from tests.helpers import ROOT

FAKE_GCLOUD = textwrap.dedent("""\
    #!/usr/bin/env bash
    # gcloud compute tpus (tpu-vm|queued-resources) (ssh|scp) ... for $HOSTS fake hosts.
    set -euo pipefail
    echo "$*" >> "$FAKE_ROOT/gcloud.log"
    verb=$4; shift 4
    command=""; src=""; dst=""
    while [[ $# -gt 0 ]]; do
      case "$1" in
        --command) command=$2; shift 2 ;;
        --zone) shift 2 ;;
        --*) shift ;;
        *) if [[ -z "$src" ]]; then src=$1; else dst=$1; fi; shift ;;
      esac
    done
    for ((i = 0; i < HOSTS; i++)); do
      home="$FAKE_ROOT/hosts/$i"; mkdir -p "$home"
      if [[ $verb == ssh ]]; then
        (cd "$home" && HOME="$home" bash -c "$command")
      else
        cp "$src" "$home/${dst#*:}"
      fi
    done
    """)

FAKE_LATENTLM = "#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > \"$HOME/argv.txt\"\n"


@pytest.fixture
def pod(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    install = ("mkdir -p .venv/bin && printf %s " + shlex.quote(FAKE_LATENTLM)
               + " > .venv/bin/latentlm && chmod +x .venv/bin/latentlm")
    env = {**os.environ, "FAKE_ROOT": str(tmp_path), "HOSTS": "2",
           "GCLOUD": str(bin_dir / "gcloud"), "LATENTLM_INSTALL": install}
    return tmp_path, env


def launch(script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_setup_copies_the_commit_to_every_host_then_run_starts_the_same_command(pod):
    root, env = pod
    out = launch("tpu_pod.sh", "setup", "my-tpu", "--zone", "z1", env=env)
    assert out.returncode == 0, out.stderr
    commit = head_commit()
    for i in range(2):
        code = root / "hosts" / str(i) / "latentlm_jax"
        assert (code / "COMMIT").read_text().strip() == commit
        assert (code / "setup.py").is_file() and (code / "launch" / "tpu_pod.sh").is_file()
        assert not (root / "hosts" / str(i) / "latentlm_jax.tar.gz").exists()
    args = ["train", "--config", "configs/latentlm.py:base", "--workdir", "gs://b/runs/a b"]
    out = launch("tpu_pod.sh", "run", "my-tpu", "--zone", "z1", "--", *args, env=env)
    assert out.returncode == 0, out.stderr
    assert commit in out.stdout
    for i in range(2):  # arguments arrive intact (the space survives quoting)
        argv = (root / "hosts" / str(i) / "argv.txt").read_text().splitlines()
        assert argv == args
    log = (root / "gcloud.log").read_text()
    assert "tpu-vm ssh my-tpu --zone z1 --worker=all" in log


def test_run_refuses_hosts_with_different_code(pod):
    root, env = pod
    assert launch("tpu_pod.sh", "setup", "my-tpu", "--zone", "z", env=env).returncode == 0
    (root / "hosts" / "1" / "latentlm_jax" / "COMMIT").write_text("0" * 40 + "\n")
    out = launch("tpu_pod.sh", "run", "my-tpu", "--zone", "z", "--", "train", env=env)
    assert out.returncode == 2
    assert "different code" in out.stderr
    assert not (root / "hosts" / "0" / "argv.txt").exists()


def test_multislice_uses_queued_resources_and_sets_the_dcn_mesh(pod):
    root, env = pod
    assert launch("tpu_multislice.sh", "setup", "my-qr", "2", "--zone", "z",
                  env=env).returncode == 0
    out = launch("tpu_multislice.sh", "run", "my-qr", "2", "--zone", "z", "--", "train",
                 "--config", "c.py", env=env)
    assert out.returncode == 0, out.stderr
    argv = (root / "hosts" / "0" / "argv.txt").read_text().splitlines()
    assert argv == ["train", "--config", "c.py", "--config.mesh.dcn.data=2"]
    log = (root / "gcloud.log").read_text()
    assert "queued-resources ssh my-qr --zone z --node=all --worker=all" in log
    assert "queued-resources scp" in log


@pytest.mark.parametrize("args, message", [
    (["tpu_pod.sh", "run", "my-tpu", "--", "train"], "--zone is required"),
    (["tpu_pod.sh", "run", "my-tpu", "--zone", "z"], "needs a latentlm command"),
    (["tpu_pod.sh", "setup", "t", "--zone", "z", "--bogus"], "unknown option --bogus"),
    (["tpu_multislice.sh", "run", "qr", "0", "--zone", "z"], "slices must be"),
])
def test_bad_invocations_say_one_thing_and_exit_2(pod, args, message):
    _, env = pod
    out = launch(*args, env=env)
    assert out.returncode == 2
    assert message in out.stderr
