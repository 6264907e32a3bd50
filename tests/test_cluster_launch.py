"""The cluster configs launched for real on this machine.

- ``ray up`` of ``cluster/local.yaml`` over SSH to 127.0.0.1. The "node" is a PID namespace of
  its own, entered by an ``sshd -i`` per connection (the config's ProxyCommand, so no port is
  opened): the ``ray stop`` that ``ray up``/``ray down`` run there sees only that namespace, so
  no other Ray on the machine is touched. The project goes into the node's virtualenv through
  the config's own ``file_mounts`` and ``setup_commands``; the venv is seeded from the test's,
  so their ``pip install -e`` takes seconds, not minutes.
- Autoscaling of the node types of ``cluster/aws.yaml`` and ``cluster/gcp.yaml`` on Ray's
  fake multi-node provider, whose worker "nodes" are raylets started on this machine by the
  autoscaler; the head, and so every node, runs in a PID namespace too.

Whatever a test starts ends with its namespace (killing the namespace's init ends all in it),
after the test has checked that the cluster's own teardown left nothing. Needs root (PID
namespaces), sshd and rsync: skipped with the reason elsewhere, a failure in CI.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from _cascade import BANDS, SIZE, make_checkpoints, make_shards
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID
from test_jobs import _free_ports

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY = str(Path(sys.executable).parent / "ray")
STAGES = ("denoise", "lens-detect", "substructure")


def _skip_or_fail(reason: str):
    """Skip where the machine cannot host a node; in CI (which can) that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the cluster launch tests: {reason}")
    pytest.skip(reason)


# ----------------------------------------------------------------------------- namespaces
class Namespace:
    """A PID namespace of its own (a "machine" for process purposes; network and files are
    shared). Its init reaps orphans, which `ray stop` waits for; killing it ends everything
    started in the namespace."""

    _REAPER = ("import os, time\nwhile True:\n try: os.wait()\n"
               " except ChildProcessError: time.sleep(0.2)")

    def __init__(self):
        self.unshare, self.nsenter = (shutil.which(n) or shutil.which(n, path="/usr/sbin:/sbin")
                                      for n in ("unshare", "nsenter"))
        if os.geteuid() != 0 or not (self.unshare and self.nsenter):
            _skip_or_fail("needs root and util-linux (unshare, nsenter): each node is a PID "
                          "namespace of its own")
        self.holder = subprocess.Popen([self.unshare, "--pid", "--fork", "--mount-proc",
                                        "--kill-child", sys.executable, "-c", self._REAPER],
                                       start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.time() + 10
        while not (children := _children(self.holder.pid)) and time.time() < deadline:
            time.sleep(0.05)
        if not children:
            self.close()
            _skip_or_fail("cannot create a PID namespace here (unshare --pid failed)")
        self.init = children[0]
        self.ns = os.readlink(f"/proc/{self.init}/ns/pid")

    def enter(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the namespace (nsenter forks into it before exec)."""
        return [self.nsenter, "--target", str(self.init), "--pid", "--mount", *cmd]

    def processes(self, ignore: tuple[str, ...] = ()) -> dict[int, str]:
        """pid: command line of the live processes in the namespace, except its init and
        those whose command line starts with one of ``ignore``."""
        found = {}
        for pid, cmd in _processes().items():
            try:
                if pid == self.init or os.readlink(f"/proc/{pid}/ns/pid") != self.ns:
                    continue
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:  # gone meanwhile
                continue
            if state != "Z" and not cmd.startswith(ignore):
                found[pid] = cmd
        return found

    def close(self) -> None:
        self.holder.kill()  # --kill-child: the init dies with it, and the kernel ends the rest
        self.holder.wait(timeout=30)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies (then its namespace
    ends too), so even a killed test run leaves nothing behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _processes() -> dict[int, str]:
    """pid: command line (arguments joined by spaces) of every process on the machine."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except OSError:  # gone meanwhile
            continue
        found[int(pid)] = b" ".join(argv).decode(errors="replace")
    return found


def _mentioning(text: str) -> list[str]:
    """Command lines (cut to 200 characters) of the machine's processes that mention ``text``,
    e.g. a cluster's temp dir."""
    return [cmd[:200] for pid, cmd in _processes().items() if text in cmd and pid != os.getpid()]


def _listening_beyond_loopback(pids) -> list[str]:
    """The TCP listening sockets of processes ``pids`` on an address other than loopback
    ("address:port", e.g. 0.0.0.0:6379); each cluster here must bind 127.0.0.1 only."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            addr = ipaddress.ip_address(socket.inet_ntop(family, raw))
            if not (addr.is_loopback or getattr(addr, "ipv4_mapped", None)
                    and addr.ipv4_mapped.is_loopback):
                found.append(f"{addr}:{int(hex_port, 16)}")
    return found


def _short_root(prefix: str) -> Path:
    root = Path("/tmp") / f"{prefix}-{uuid.uuid4().hex[:6]}"  # Ray's socket paths are limited
    root.mkdir(mode=0o700)
    (root / "tmp").mkdir()
    return root


def _wait(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.time() + timeout
    while not (value := check()):
        if time.time() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(every)
    return value


def _until_empty(find, timeout: float) -> list:
    """Poll ``find()`` until it returns nothing (processes still stopping); its last result."""
    deadline = time.time() + timeout
    while (found := find()) and time.time() < deadline:
        time.sleep(1)
    return found


def _get(address: str, path: str, token: Path | None = None) -> dict:
    """GET a JSON endpoint of a job server (dashboard), with the bearer token when given."""
    headers = {"Authorization": f"Bearer {token.read_text().strip()}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(address + path, headers=headers),
                                timeout=30) as r:
        return json.load(r)


def _run(cmd: list[str], env: dict, log: Path, timeout: float) -> int:
    with open(log, "ab") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n".encode())
        f.flush()
        return subprocess.run(cmd, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              timeout=timeout).returncode


def _tail(log: Path, n: int = 5000) -> str:
    return log.read_text(errors="replace")[-n:]


def _check_catalogue(out: Path, rows: int) -> dict:
    """Every row exactly once, counts adding up; the run's summary."""
    summary = json.loads((out / "summary.json").read_text())
    cat = pq.read_table(out / "catalog").to_pandas()
    assert summary["adds_up"] and summary["total"]["rows"] == len(cat) == rows, summary
    assert cat["id"].is_unique and cat["p_lens"].notna().all()
    return summary


# ----------------------------------------------------------------------------- ray up over SSH
class SSHNode:
    """A loopback machine reached over SSH as the current user, with HOME and TMPDIR of its
    own under ``root``."""

    def __init__(self, root: Path, ns: Namespace):
        sshd = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin")
        if not (sshd and shutil.which("ssh") and shutil.which("rsync")):
            _skip_or_fail("needs openssh-server, openssh-client and rsync "
                          "(apt-get install openssh-server rsync)")
        self.ns = ns
        self.root, self.home, self.key = root, root / "home", root / "key"
        self.home.mkdir()
        for dotfile in Path("/etc/skel").glob(".*"):  # a new user's .bashrc and .profile
            shutil.copy(dotfile, self.home)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        for name in ("key", "host_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", root / name],
                           check=True)
        (root / "sshd_config").write_text(
            f"HostKey {root}/host_key\nAuthorizedKeysFile {root}/key.pub\nStrictModes no\n"
            "UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPidFile none\nPrintMotd no\nLogLevel ERROR\n"
            # A cluster of one machine: with this, Ray binds 127.0.0.1, not the machine's address.
            f"SetEnv HOME={self.home} TMPDIR={root}/tmp RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0\n")
        self.proxy = root / "proxy"
        self.proxy.write_text("#!/bin/sh\nexec " + shlex.join(
            self.ns.enter([sshd, "-i", "-f", f"{root}/sshd_config"])) + "\n")
        self.proxy.chmod(0o755)

    def processes(self) -> list[str]:
        """What runs on the node, but for SSH sessions (the client keeps each connection
        open a few seconds after its command)."""
        return list(self.ns.processes(ignore=("sshd", "bash")).values())

    def seed_venv(self) -> None:
        """Give the node the venv that the config's setup commands would create (`python3 -m
        venv ~/lensray-venv`), holding the test's packages (a .pth file) and console scripts.
        The setup commands still run: they find the venv and `pip install -e` the copy of the
        repository that `ray up` synced into it."""
        venv = self.home / "lensray-venv"
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", venv], check=True)
        site = Path(sysconfig.get_paths()["purelib"])
        (venv / site.relative_to(sys.prefix) / "_lensray_test.pth").write_text(f"{site}\n")
        shebang = f"#!{Path(sys.prefix) / 'bin' / 'python'}".encode()  # python, python3.11
        for script in (Path(sys.prefix) / "bin").iterdir():
            target = venv / "bin" / script.name
            if script.is_file() and not target.exists():
                first, _, rest = script.read_bytes().partition(b"\n")
                if first.startswith(shebang):
                    target.write_bytes(f"#!{venv}/bin/python\n".encode() + rest)
                    target.chmod(0o755)
        # pip on the node resolves packages as here: an SSH session has neither the client's
        # environment (PIP_*) nor its HOME (user pip.conf).
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], check=True,
                             capture_output=True, text=True).stdout
        settings = {}
        for line in out.splitlines():  # global.find-links='/opt/wheels', :env:.cert='...'
            key, _, value = line.partition("=")
            section, _, name = key.partition(".")
            if section in ("global", ":env:") and name:
                settings[name] = value.strip("'")
        conf = self.home / ".config" / "pip" / "pip.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))


@pytest.fixture(scope="module")
def ssh_node():
    root = _short_root("lrnode")
    ns = None
    try:
        ns = Namespace()
        node = SSHNode(root, ns)
        node.seed_venv()
        yield node
    finally:
        if ns is not None:
            ns.close()
        shutil.rmtree(root, ignore_errors=True)


def _render_local(node: SSHNode, name: str, token: Path) -> tuple[dict, dict[str, int]]:
    """A test copy of cluster/local.yaml: head only at 127.0.0.1, reached through the node's
    proxy, Ray on free ports and its own temp dir; every command as shipped."""
    config = yaml.safe_load((CLUSTER / "local.yaml").read_text())
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(node.key),
                      "ssh_proxy_command": str(node.proxy)}
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    config["file_mounts"]["~/.ray/auth_token"] = str(token)
    names = ["port", "dashboard-port", "agent", "ray-client-server-port", "node-manager-port",
             "object-manager-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    moves = {"--port=6379": f"--port={ports['port']}",
             "--dashboard-port=8265": f"--dashboard-port={ports['dashboard-port']}",
             "--dashboard-agent-listen-port=52365":
                 f"--dashboard-agent-listen-port={ports['agent']}",
             "--agent-port=52365": f"--agent-port={ports['agent']}",
             "ray start --head": "ray start --head --node-ip-address=127.0.0.1 "
                                 f"--temp-dir={node.root}/ray " + " ".join(
                                     f"--{k}={ports[k]}" for k in names[3:])}
    commands = config["head_start_ray_commands"]
    for old, new in moves.items():
        assert any(old in c for c in commands), f"cluster/local.yaml: no {old!r} to move"
        commands = [c.replace(old, new) for c in commands]
    config["head_start_ray_commands"] = commands
    return config, ports


def _remove_ssh_control_dir(cluster_name: str) -> None:
    """`ray up` keeps its SSH control sockets under a fixed path, /tmp/ray_ssh_<user>/<cluster>
    (hashed names): remove this cluster's, and the user's if that leaves it empty."""
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    user = Path("/tmp") / f"ray_ssh_{digest(getpass.getuser())}"
    shutil.rmtree(user / digest(cluster_name), ignore_errors=True)
    with contextlib.suppress(OSError):
        user.rmdir()


@pytest.mark.timeout(1500)  # ~3 min on a quiet 2-core machine; generous for a loaded one
def test_ray_up_local_yaml_over_ssh(ssh_node, tmp_path):
    """`ray up` → `ray job submit` at once → `ray up` again (idempotent; the rerun resumes
    per file) → `ray down`, which leaves no process on the node."""
    node = ssh_node
    name = f"lrtest-{uuid.uuid4().hex[:6]}"
    token = node.root / "auth_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    token.chmod(0o600)
    config, ports = _render_local(node, name, token)
    config_file = node.root / "cluster.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               TMPDIR=str(node.root / "tmp"),  # what `ray up` keeps on the client side
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    log = tmp_path / "ray.log"
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    out = node.root / "out"

    def submit() -> dict:
        job = f"lensray-up-{uuid.uuid4().hex[:6]}"
        code = _run([RAY, "job", "submit", "--address", address, "--submission-id", job,
                     "--working-dir", str(REPO), "--", "python", "jobs/run.py", "--demo",
                     "--demo-n", "20", "--out", str(out), "--no-progress"], env, log, 900)
        status = _get(address, f"/api/jobs/{job}", token)["status"]
        assert code == 0 and status == "SUCCEEDED", _tail(log)
        return _check_catalogue(out, 20)

    def heads() -> list[str]:
        return [p for p in node.processes() if "gcs_server" in p.split()[0]]

    try:
        assert _run([RAY, "up", "-y", "--no-config-cache", str(config_file)], env, log,
                    600) == 0, _tail(log)
        # Right after `ray up`: the config waited for the job agent, so this submit works.
        assert submit()["inputs"]["processed"] == 4
        site = node.home / "lensray-venv" / Path(sysconfig.get_paths()["purelib"]).relative_to(
            sys.prefix)  # the setup commands installed the synced copy into the node's venv
        finder = "".join(f.read_text() for f in site.glob("__editable__*lensray*"))
        assert str(node.home / "lensray" / "pipeline") in finder
        first_head = heads()
        assert len(first_head) == 1, first_head
        assert not _listening_beyond_loopback(node.ns.processes())
        # A second `ray up` of the same config: the same single head, restarted; a rerun of
        # the job resumes per file and leaves the catalogue as it was.
        assert _run([RAY, "up", "-y", "--no-config-cache", str(config_file)], env, log,
                    600) == 0, _tail(log)
        again = heads()
        assert len(again) == 1 and again != first_head, (first_head, again)
        summary = submit()
        assert summary["inputs"]["skipped_finished"] == 4 and summary["this_run"]["rows"] == 0
    finally:
        down = _run([RAY, "down", "-y", str(config_file)], env, log, 300)
        _remove_ssh_control_dir(name)
    assert down == 0, _tail(log)
    # `ray down` ran `ray stop` in the node's login shell (the venv's ray on PATH): nothing left.
    # `ray stop` waits for each process; on a loaded machine that takes longer than on a quiet one.
    left = _until_empty(node.processes, 90) + _mentioning(f"{node.root}/ray")
    assert not left, left


# ----------------------------------------------------------------------------- fake multi-node
def fake_multinode_config(cloud: dict, gcs_address: str, *, idle_timeout_minutes: float,
                          max_workers: int = 2) -> dict:
    """The node types of a cloud config (aws.yaml, gcp.yaml) for Ray's fake multi-node
    provider: the head keeps its declared resources (CPU 0: no model actors there), each worker
    type its declared resources (GPU included) and min_workers; a short idle timeout and few
    nodes for this machine. The provider is loaded as an external module because the pip
    package of Ray lacks the defaults file of its "fake_multinode" type."""
    head = cloud["available_node_types"][cloud["head_node_type"]]
    types = {"ray.head.default": {"resources": dict(head["resources"]), "node_config": {},
                                  "max_workers": 0}}  # the name the fake provider gives its head
    for name, spec in cloud["available_node_types"].items():
        if name != cloud["head_node_type"]:
            types[name] = {"resources": dict(spec["resources"]), "node_config": {},
                           "min_workers": spec["min_workers"],
                           "max_workers": min(spec["max_workers"], max_workers)}
    return {
        "cluster_name": f"fake-{cloud['cluster_name']}",
        "max_workers": max_workers,
        "upscaling_speed": cloud["upscaling_speed"],
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "external",
                     "module": "ray.autoscaler._private.fake_multi_node.node_provider."
                               "FakeMultiNodeProvider",
                     "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     # autoscaler v2 (what `ray up` runs since Ray 2.50) with this provider
                     "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                           "worker_setup_commands", "head_start_ray_commands",
                           "worker_start_ray_commands", "cluster_synced_files")},
        "file_mounts": {},
    }


IDLE_MINUTES = 0.25


class FakeCluster:
    """A head started with ``--autoscaling-config`` (the fake provider) in its own namespace."""

    def __init__(self, cloud_name: str, root: Path, ns: Namespace):
        self.root, self.ns = root, ns
        self.cloud = yaml.safe_load((CLUSTER / cloud_name).read_text())
        names = ["port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
                 "node-manager-port", "object-manager-port"]
        ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.config = fake_multinode_config(self.cloud, f"127.0.0.1:{ports['port']}",
                                            idle_timeout_minutes=IDLE_MINUTES)
        (root / "fake.yaml").write_text(yaml.safe_dump(self.config))
        head = self.config["available_node_types"]["ray.head.default"]["resources"]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        self.env.update(
            RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="disabled",
            RAY_enable_autoscaler_v2="1", RAY_CLOUD_INSTANCE_ID=FAKE_HEAD_NODE_ID,
            RAY_OVERRIDE_NODE_ID_FOR_TESTING=FAKE_HEAD_NODE_ID,
            RAY_USAGE_STATS_ENABLED="0", TMPDIR=str(root / "tmp"),
            # One machine: Ray binds 127.0.0.1 (else the machine's address, even with
            # --node-ip-address=127.0.0.1), the nodes the autoscaler starts included.
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}")
        cmd = [RAY, "start", "--head", "--block", f"--num-cpus={head.get('CPU', 0)}",
               f"--num-gpus={head.get('GPU', 0)}", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", "--disable-usage-stats", f"--temp-dir={root}/ray",
               f"--autoscaling-config={root}/fake.yaml", *(f"--{k}={v}" for k, v in ports.items())]
        self.log = root / "head.log"
        with open(self.log, "wb") as f:
            self.head = subprocess.Popen(self.ns.enter(cmd), env=self.env, stdout=f,
                                         stderr=subprocess.STDOUT)
        self.address = f"http://127.0.0.1:{ports['dashboard-port']}"
        _wait("the fake cluster's job server", self._answers, 120, 0.5)
        _wait("the head node", lambda: [n for n in self.nodes() if n["state"] == "ALIVE"],
              60, 0.5)

    def _answers(self) -> bool:
        if self.head.poll() is not None:
            pytest.fail(f"ray start failed: {_tail(self.log)}")
        try:
            return _get(self.address, "/api/jobs/") is not None
        except OSError:
            return False

    def nodes(self) -> list[dict]:
        return _get(self.address, "/api/v0/nodes?detail=1&limit=1000")["data"]["result"]["result"]

    def actors(self, job_id: str) -> list[dict]:
        actors = _get(self.address, "/api/v0/actors?detail=1&limit=10000")
        return [a for a in actors["data"]["result"]["result"] if a["job_id"] == job_id]

    def worker_type(self, node: dict) -> str | None:
        """The node type whose declared resources a node has (None: the head)."""
        for name, spec in self.config["available_node_types"].items():
            total = node["resources_total"]
            if name != "ray.head.default" and all(
                    total.get(k, 0) == v for k, v in spec["resources"].items()):
                return name
        return None

    def submit(self, args: list[str]) -> str:
        """`ray job submit --no-wait -- python jobs/run.py ARGS`; the Ray job id."""
        job = f"lensray-fake-{uuid.uuid4().hex[:6]}"
        code = _run([RAY, "job", "submit", "--address", self.address, "--submission-id", job,
                     "--no-wait", "--working-dir", str(REPO), "--", "python", "jobs/run.py",
                     *args], self.env, self.root / "jobs.log", 300)
        assert code == 0, _tail(self.root / "jobs.log")
        return job

    def wait_job(self, job: str, timeout: float) -> dict:
        def finished():
            info = _get(self.address, f"/api/jobs/{job}")
            return info if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None

        return _wait(f"job {job}", finished, timeout)


def _job_args(data: Path, out: Path, *extra: str) -> list[str]:
    args = [str(data / "field"), "--out", str(out), *extra, "--bands", *BANDS, "--size", str(SIZE),
            "--batch-size", "8", "--threshold", "0.5", "--gallery", "0", "--no-progress"]
    for stage in STAGES:
        args += [f"--{stage}-checkpoint", str(data / "ckpt" / stage)]
    return args


@pytest.fixture(scope="module", params=["aws.yaml", "gcp.yaml"])
def fake_cluster(request):
    root = _short_root("lrfake")
    ns = None
    try:
        ns = Namespace()
        yield FakeCluster(request.param, root, ns)
    finally:
        if ns is not None:
            ns.close()  # every node of the cluster, head included, is in the namespace
        left = _until_empty(lambda: _mentioning(str(root)), 10)
        shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes of the fake cluster left: {left}"


@pytest.mark.timeout(900)
def test_cloud_node_types_autoscale_on_fake_multinode(fake_cluster, tmp_path):
    """The job makes the autoscaler add a worker of the cloud config's GPU type, the model
    actors run there (never on the CPU-0 head), and the worker goes after the idle timeout."""
    cluster = fake_cluster
    _wait("a cluster of the head alone", lambda: [
        n["is_head_node"] for n in cluster.nodes() if n["state"] == "ALIVE"] == [True], 120)
    make_shards(tmp_path / "data" / "field", [20, 20, 20], seed=5)
    make_checkpoints(tmp_path / "data" / "ckpt")
    # --gpus 1: the cluster starts without GPU nodes; the model pools ask for GPU shares anyway.
    job = cluster.submit(_job_args(tmp_path / "data", tmp_path / "out", "--gpus", "1"))
    info = cluster.wait_job(job, 300)
    assert info["status"] == "SUCCEEDED", _tail(cluster.root / "jobs.log") + str(info["message"])
    _check_catalogue(tmp_path / "out", 60)
    assert not _listening_beyond_loopback(cluster.ns.processes())  # head and workers alike

    workers = {n["node_id"]: cluster.worker_type(n) for n in cluster.nodes()
               if not n["is_head_node"]}
    gpu_types = {k for k, t in cluster.config["available_node_types"].items()
                 if t["resources"].get("GPU")}
    assert workers and set(workers.values()) <= gpu_types, workers
    models = [a for a in cluster.actors(info["driver_info"]["id"])
              if a["class_name"].startswith("MapWorker")]
    assert models and all(a["node_id"] in workers for a in models), models
    assert all(a["required_resources"].get("GPU") for a in models), models  # GPU shares held
    # Removed after idle_timeout_minutes (here 15 s; the autoscaler checks every second).
    _wait("the idle GPU worker's removal", lambda: all(
        n["state"] == "DEAD" for n in cluster.nodes() if n["node_id"] in workers),
        IDLE_MINUTES * 60 + 90)


@pytest.mark.parametrize("fake_cluster", ["aws.yaml"], indirect=True)
@pytest.mark.timeout(900)
def test_killed_worker_node_actors_restart_and_every_row_is_written(fake_cluster, tmp_path):
    """A GPU worker node dies mid-job (its raylet is killed, as a preempted spot instance
    would vanish): the autoscaler replaces it, the model actors restart there, and every row
    is written exactly once, by the job itself or by its rerun, which resumes per file."""
    cluster = fake_cluster
    counts = [400] * 8  # long enough to be killed mid-run, after its first file
    make_shards(tmp_path / "data" / "field", counts, seed=11)
    make_checkpoints(tmp_path / "data" / "ckpt")
    out = tmp_path / "out"
    drivers = []

    def run() -> str:
        job = cluster.submit(_job_args(tmp_path / "data", out))
        drivers.append(_wait("the job's driver", lambda: _get(
            cluster.address, f"/api/jobs/{job}")["driver_info"], 120)["id"])
        return job

    def model_actors() -> list[dict]:
        return [a for d in drivers for a in cluster.actors(d)
                if a["class_name"].startswith("MapWorker")]

    job = run()

    # Once the first input file is committed, a model actor is at work on a worker node.
    _wait("a committed file", lambda: list((out / "_shards").glob("*.json")), 300, 0.5)
    victim = _wait("a live model actor", lambda: [
        a for a in model_actors() if a["state"] == "ALIVE"], 60, 0.5)[0]["node_id"]
    raylet = [pid for pid, cmd in cluster.ns.processes().items()
              if cmd.split()[0].endswith("/raylet") and f"--node_id={victim}" in cmd]
    assert len(raylet) == 1, raylet
    os.kill(raylet[0], signal.SIGKILL)
    assert _get(cluster.address, f"/api/jobs/{job}")["status"] == "RUNNING"

    info = cluster.wait_job(job, 400)
    reruns = 0
    if info["status"] != "SUCCEEDED":  # the run may die with the node: its rerun resumes
        reruns = 1
        info = cluster.wait_job(run(), 400)
    assert info["status"] == "SUCCEEDED", str(info["message"]) + _tail(cluster.root / "jobs.log")
    summary = _check_catalogue(out, sum(counts))
    if reruns:
        assert 0 < summary["inputs"]["skipped_finished"] < len(counts), summary["inputs"]
    nodes = {n["node_id"]: n for n in cluster.nodes()}
    assert nodes[victim]["state"] == "DEAD"
    # The actors restarted on a new worker of the same type (never the head).
    later = {a["node_id"] for a in model_actors()} - {victim}
    assert later and all(cluster.worker_type(nodes[n]) == cluster.worker_type(nodes[victim])
                         for n in later), later
    print(f"node killed mid-run: job {'failed, rerun resumed' if reruns else 'recovered'}")
