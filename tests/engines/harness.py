"""Start and stop private Docker engines (dockerd + its own containerd) for tests.

Each :class:`Engine` gets a fresh root directory holding its data-root, exec-root,
sockets, pidfile, configs and logs; nothing global (``/var/lib/docker``,
``/run/docker.sock``, ``/etc/docker``, a system containerd) is used.  Binaries come
from ``python -m tests.engines.provision``.

Needs root (dockerd mounts overlay filesystems and runs containers).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.engines import provision

DOCKER_CLI = os.environ.get("PACKCACHE_DOCKER_CLI", "/usr/local/bin/docker")
SNAPSHOTTER_DRIVER_TYPE = "io.containerd.snapshotter.v1"
# Unix socket paths are limited to 108 bytes (sun_path); leave room for the
# ".ttrpc" suffix containerd appends.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class EngineKind:
    name: str
    bundle: str  # folder under the engines dir (see provision.BUNDLES)
    version_prefix: str  # expected start of `docker version` ServerVersion
    containerd_store: bool  # containerd image store instead of a graphdriver


ENGINE_KINDS: dict[str, EngineKind] = {
    k.name: k
    for k in (
        EngineKind("20.10-graphdriver", "20.10", "20.10.", False),
        EngineKind("26.1-graphdriver", "26.1", "26.1.", False),
        EngineKind("26.1-containerd", "26.1", "26.1.", True),
        EngineKind("28-containerd", "28", "28.", True),
    )
}
# Every kind is required: a test session starts each one it needs, and one that is not
# provisioned or does not start fails the run.
REQUIRED_KINDS = list(ENGINE_KINDS)
# The containerd-store engine whose API (1.48+) reports missing content after a load.
CONTENT_CHECK_KIND = "28-containerd"


class EngineError(RuntimeError):
    pass


def default_run_base() -> Path:
    # /tmp keeps socket paths short whatever the repo / engines dir path is.
    return Path(os.environ.get("PACKCACHE_ENGINES_RUN", "/tmp/pce"))


# --------------------------------------------------------------------------- small helpers


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api_request(
    sock_path: str | Path, method: str, path: str, timeout: float = 30.0
) -> tuple[int, bytes]:
    conn = _UnixHTTPConnection(str(sock_path), timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _socket_accepts(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


# If the test process is SIGKILLed, its daemons get SIGTERM instead of living on. Set by
# setpriv in the child rather than by a preexec_fn: Python code run between fork and exec
# can hang on locks held by grpc's threads in the parent.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"]


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below root, deepest first."""
    prefix = str(root).rstrip("/")
    found: list[str] = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].encode().decode("unicode_escape")  # octal escapes (\040)
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return sorted(set(found), key=lambda m: m.count("/"), reverse=True)


def unmount_all(root: Path) -> None:
    for _ in range(3):  # stacked mounts of the same point need several passes
        mps = mounts_under(root)
        if not mps:
            return
        for mp in mps:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)


def processes_referencing(root: Path) -> list[int]:
    """Pids whose command line mentions root (e.g. shims started with -address ROOT/c.sock)."""
    needle = str(root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


SHIM_SOCKET_DIR = Path("/run/containerd/s")


def shim_sockets(root: Path) -> list[Path]:
    """Sockets our shims made in containerd's fixed /run/containerd/s (hashed names).

    A shim removes its socket when it exits normally; a SIGKILLed one leaves it, so
    stop()/cleanup find them through the task bundles under the engine's state dir.
    """
    found = []
    for bundle in root.glob("exec/containerd/io.containerd.runtime.v2.task/*/*"):
        addresses = []
        with contextlib.suppress(OSError, ValueError):
            addresses.append((bundle / "address").read_text().strip())  # containerd 1.x
        with contextlib.suppress(OSError, ValueError):
            boot = json.loads((bundle / "bootstrap.json").read_text())  # containerd 2.x
            addresses.append(str(boot.get("address", "")))
        for addr in addresses:
            path = Path(addr.removeprefix("unix://"))
            if path.parent == SHIM_SOCKET_DIR:
                found.append(path)
    return found


def remove_shim_sockets(root: Path) -> None:
    for path in shim_sockets(root):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def cgroup_dirs(name: str) -> list[Path]:
    """The cgroup directory `/<name>` in every mounted cgroup hierarchy (v1 and v2)."""
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            pre, _, post = line.partition(" - ")
            if post.split()[0] in ("cgroup", "cgroup2"):
                d = Path(pre.split()[4]) / name
                if d.is_dir():
                    found.append(d)
    return found


def remove_cgroup(name: str) -> None:
    """Kill whatever still runs in the engine's cgroup parent and remove the cgroups."""
    for _ in range(50):
        dirs = cgroup_dirs(name)
        if not dirs:
            return
        for top in dirs:
            # Bottom-up: a cgroup directory can only be removed once its children are.
            for dirpath, _, _ in os.walk(top, topdown=False):
                d = Path(dirpath)
                try:
                    pids = (d / "cgroup.procs").read_text().split()
                except OSError:
                    pids = []
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    d.rmdir()  # fails while killed processes are still exiting
        time.sleep(0.1)


_overlay_cache: dict[Path, bool] = {}


def overlay_works(base: Path) -> bool:
    """Can we mount overlayfs with upper/work dirs on base's filesystem?"""
    base.mkdir(parents=True, exist_ok=True)
    if base in _overlay_cache:
        return _overlay_cache[base]
    d = Path(tempfile.mkdtemp(prefix=".ovl-", dir=base))
    try:
        for sub in ("l", "u", "w", "m"):
            (d / sub).mkdir()
        opts = f"lowerdir={d / 'l'},upperdir={d / 'u'},workdir={d / 'w'}"
        ok = (
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", opts, str(d / "m")], capture_output=True
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(d / "m")], check=False)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    _overlay_cache[base] = ok
    return ok


def cleanup_stale(run_base: Path) -> None:
    """Remove roots left by engines whose owning test process died without stopping them."""
    if not run_base.is_dir():
        return
    for root in run_base.iterdir():
        owner = root / "owner.pid"
        if not root.is_dir() or not owner.exists():
            continue
        try:
            pid = int(owner.read_text())
        except ValueError:
            pid = 0
        if pid and _alive(pid):
            continue  # another live session owns it
        for p in processes_referencing(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        remove_cgroup(cgroup_parent_name(root))
        remove_shim_sockets(root)
        unmount_all(root)
        shutil.rmtree(root, ignore_errors=True)


def cgroup_parent_name(root: Path) -> str:
    # One cgroup parent per engine instead of the shared default "/docker": containers
    # of a dead engine can be found and killed, and nothing is left under /sys/fs/cgroup.
    return f"packcache-{root.name}"


def is_containerd_store(info: dict[str, Any]) -> bool:
    """True when `docker info` says images live in containerd's snapshotters."""
    driver_types = [v for k, v in (info.get("DriverStatus") or []) if k == "driver-type"]
    return SNAPSHOTTER_DRIVER_TYPE in driver_types


# --------------------------------------------------------------------------- Engine


class Engine:
    """A private dockerd (with its own containerd) of one ENGINE_KINDS kind."""

    def __init__(
        self,
        kind: str,
        *,
        engines_dir: Path | None = None,
        run_base: Path | None = None,
        storage_driver: str | None = None,
    ) -> None:
        if kind not in ENGINE_KINDS:
            raise EngineError(f"unknown engine kind {kind!r}; known: {sorted(ENGINE_KINDS)}")
        self.spec = ENGINE_KINDS[kind]
        self.kind = kind
        self.containerd_store = self.spec.containerd_store
        self.engines_dir = (engines_dir or provision.default_dir()).resolve()
        self.run_base = run_base or default_run_base()
        self._storage_driver = storage_driver
        self.root: Path = Path()
        self.host = ""
        self.version = ""
        self.api_version = ""
        self.storage_driver = ""
        self.pid: int | None = None
        self.containerd_pid: int | None = None
        self.start_seconds = 0.0
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._containerd: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------------------

    @property
    def bundle_root(self) -> Path:
        return provision.bundle_root(self.engines_dir, self.spec.bundle)

    def is_provisioned(self) -> bool:
        return all(
            provision.is_provisioned(self.engines_dir, b) for b in (self.spec.bundle, "runc")
        )

    def _path_env(self) -> str:
        # bookworm runc first: the bundles' own runc (trixie/sid) needs glibc 2.38.
        dirs = [
            provision.bundle_root(self.engines_dir, "runc") / "usr/sbin",
            self.bundle_root / "usr/bin",
            self.bundle_root / "usr/sbin",
        ]
        return ":".join([*map(str, dirs), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def containerd_log_path(self) -> Path:
        return self.root / "containerd.log"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Engine:
        if self._dockerd is not None:
            return self
        if os.geteuid() != 0:
            raise EngineError("private Docker engines need root")
        if not self.is_provisioned():
            raise EngineError(
                f"engine {self.kind!r} is not provisioned in {self.engines_dir}; run "
                "`python -m tests.engines.provision` (or set PACKCACHE_ENGINES_DIR)"
            )
        t0 = time.monotonic()
        self.run_base.mkdir(parents=True, exist_ok=True)
        cleanup_stale(self.run_base)
        self.root = self._make_root()
        (self.root / "owner.pid").write_text(str(os.getpid()))
        sock = self.root / "d.sock"
        csock = self.root / "c.sock"
        if len(str(csock)) + len(".ttrpc") > MAX_SOCKET_PATH:
            raise EngineError(f"socket path too long ({csock}); set PACKCACHE_ENGINES_RUN shorter")
        self.host = f"unix://{sock}"
        # Namespaces only need to be unique per containerd, but a unique name also makes
        # a leaked shim easy to attribute.
        ns = f"pc-{self.root.name}"
        overlay = overlay_works(self.run_base)
        if self._storage_driver:
            self.storage_driver = self._storage_driver
        elif self.containerd_store:
            self.storage_driver = "overlayfs" if overlay else "native"
        else:
            self.storage_driver = "overlay2" if overlay else "vfs"
        env = {
            "PATH": self._path_env(),
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.root / "tmp"),
        }
        (self.root / "tmp").mkdir()
        try:
            self._start_containerd(csock, env)
            self._start_dockerd(sock, csock, ns, env)
            self._wait_ready(sock, timeout, t0)
            self._read_identity(sock)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _make_root(self) -> Path:
        # Not mkdtemp: its suffix may contain "_" next to "-", which containerd rejects
        # in namespace names (derived from this directory name).
        while True:
            root = self.run_base / f"{self.kind}-{secrets.token_hex(4)}"
            try:
                root.mkdir(mode=0o711)
                return root
            except FileExistsError:
                continue

    def _start_containerd(self, csock: Path, env: dict[str, str]) -> None:
        # We run containerd ourselves instead of letting dockerd spawn one: dockerd
        # (20.10 .. 28) silently uses /run/containerd/containerd.sock if that socket
        # exists (a system containerd), and the config it generates for its own
        # containerd leaves the "opt" plugin creating /opt/containerd.
        r = self.root
        cfg = r / "containerd.toml"
        cfg.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{r}/data/containerd"',
                    f'state = "{r}/exec/containerd"',
                    # CRI/NRI are for Kubernetes; unknown ids are ignored, so one
                    # list fits containerd 1.6 .. 2.x.
                    "disabled_plugins = ["
                    '"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", '
                    '"io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]',
                    "[grpc]",
                    f'  address = "{csock}"',
                    "[debug]",
                    '  address = ""',
                    "[metrics]",
                    '  address = ""',
                    '[plugins."io.containerd.internal.v1.opt"]',
                    f'  path = "{r}/data/containerd-opt"',
                    "",
                ]
            )
        )
        with open(self.containerd_log_path, "ab") as log:
            self._containerd = subprocess.Popen(
                [*DIE_WITH_PARENT, str(self.bundle_root / "usr/bin/containerd"), "--config", cfg],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal must not reach it first
            )
        self.containerd_pid = self._containerd.pid
        deadline = time.monotonic() + 30
        while not _socket_accepts(csock):
            if self._containerd.poll() is not None:
                raise EngineError(
                    f"{self.kind}: containerd exited ({self._containerd.returncode}):\n"
                    + _tail(self.containerd_log_path)
                )
            if time.monotonic() > deadline:
                raise EngineError(
                    f"{self.kind}: containerd not ready:\n" + _tail(self.containerd_log_path)
                )
            time.sleep(0.05)

    def _start_dockerd(self, sock: Path, csock: Path, ns: str, env: dict[str, str]) -> None:
        r = self.root
        daemon_json: dict[str, Any] = {}
        if self.spec.bundle == "20.10":
            # 20.10 otherwise writes its identity key to /etc/docker/key.json.
            daemon_json["deprecated-key-path"] = str(r / "key.json")
        else:
            # Explicit either way: newer engines flip the default to the containerd store.
            daemon_json["features"] = {"containerd-snapshotter": self.containerd_store}
        cfg = r / "daemon.json"
        cfg.write_text(json.dumps(daemon_json, indent=2) + "\n")
        cmd = [
            *DIE_WITH_PARENT,
            str(self.bundle_root / "usr/sbin/dockerd"),
            # An explicit config file: never read /etc/docker/daemon.json.
            f"--config-file={cfg}",
            f"--data-root={r}/data",
            f"--exec-root={r}/exec",
            f"--pidfile={r}/dockerd.pid",
            f"--host=unix://{sock}",
            f"--containerd={csock}",
            f"--containerd-namespace={ns}",
            f"--containerd-plugins-namespace={ns}-plugins",
            f"--storage-driver={self.storage_driver}",
            f"--cgroup-parent=/{cgroup_parent_name(r)}",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
        ]
        if self.spec.bundle != "20.10":
            cmd.append("--ip6tables=false")  # 28.x turns it on by default
        cmd += [
            # Tests never need long graceful container stops.
            "--shutdown-timeout=5",
        ]
        with open(self.log_path, "ab") as log:
            self._dockerd = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.pid = self._dockerd.pid

    def _wait_ready(self, sock: Path, timeout: float, t0: float) -> None:
        assert self._dockerd is not None
        while True:
            if self._dockerd.poll() is not None:
                raise EngineError(
                    f"{self.kind}: dockerd exited with {self._dockerd.returncode}; log tail:\n"
                    + _tail(self.log_path)
                )
            try:
                status, body = api_request(sock, "GET", "/_ping", timeout=2)
                if status == 200 and body == b"OK":
                    return
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise EngineError(
                    f"{self.kind}: dockerd not ready after {timeout:.0f} s; log tail:\n"
                    + _tail(self.log_path)
                )
            time.sleep(0.1)

    def _read_identity(self, sock: Path) -> None:
        ver = self.api_json("/version")
        self.version = ver["Version"]
        self.api_version = ver["ApiVersion"]
        if not self.version.startswith(self.spec.version_prefix):
            raise EngineError(
                f"{self.kind}: dockerd reports {self.version}, want {self.spec.version_prefix}x"
            )
        info = self.info()
        got_store = is_containerd_store(info)
        if got_store != self.containerd_store:
            raise EngineError(
                f"{self.kind}: containerd store is {got_store}, want {self.containerd_store}"
            )

    def stop(self) -> None:
        """Stop dockerd then containerd (by pid), kill leftovers, unmount, remove the root."""
        for proc, grace in ((self._dockerd, 20.0), (self._containerd, 10.0)):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._dockerd = self._containerd = None
        self.pid = self.containerd_pid = None
        if not self.root.name or not self.root.is_dir():
            return
        # Shims (and anything else) started with our socket paths outlive their parents.
        for p in processes_referencing(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        remove_cgroup(cgroup_parent_name(self.root))
        remove_shim_sockets(self.root)
        unmount_all(self.root)
        if os.environ.get("PACKCACHE_KEEP_ENGINE_LOGS") == "1":
            keep = self.run_base / "logs"
            keep.mkdir(exist_ok=True)
            for log in (self.log_path, self.containerd_log_path):
                if log.exists():
                    shutil.copy2(log, keep / f"{self.root.name}-{log.name}")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"Engine({self.kind!r}, host={self.host!r}, version={self.version!r}, pid={self.pid})"
        )

    # -- talking to it -------------------------------------------------------------------

    def api_json(self, path: str) -> Any:
        status, body = api_request(self.host.removeprefix("unix://"), "GET", path)
        if status != 200:
            raise EngineError(f"GET {path}: HTTP {status}: {body[:500]!r}")
        return json.loads(body)

    def info(self) -> dict[str, Any]:
        return self.api_json("/info")  # type: ignore[no-any-return]

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = self.host
        # Private CLI config dir: no ~/.docker contexts/credentials leak in or out.
        env["DOCKER_CONFIG"] = str(self.root / "cli")
        # The CLI negotiates down on its own (checked against 20.10 / API 1.41); pinning
        # the older daemon's API just makes the version under test explicit. Never pin
        # above what the client knows (28.x daemons speak 1.51, client 28.2 1.50).
        client = client_api_version()
        if self.api_version and client and _api_tuple(self.api_version) < _api_tuple(client):
            env["DOCKER_API_VERSION"] = self.api_version
        return env

    def docker(
        self,
        *args: str,
        check: bool = True,
        input: bytes | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the docker CLI against this engine; raise with stderr on failure if check."""
        proc = subprocess.run(
            [DOCKER_CLI, *args],
            env=self.cli_env(),
            input=input,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise EngineError(
                f"docker {' '.join(args)} on {self.kind} failed ({proc.returncode}):\n"
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc


def _api_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


_client_api: list[str] = []


def client_api_version() -> str:
    """The docker CLI's own (maximum) API version, e.g. "1.50"; "" if unknown."""
    if not _client_api:
        # Without a reachable daemon `docker version` still prints the client part.
        proc = subprocess.run(
            [DOCKER_CLI, "version", "--format", "{{.Client.APIVersion}}"],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
                "DOCKER_HOST": "unix:///nonexistent.sock",
            },
            capture_output=True,
            text=True,
        )
        out = proc.stdout.strip()
        _client_api.append(out if out.replace(".", "").isdigit() else "")
    return _client_api[0]


def docker(
    engine: Engine, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    """Module-level spelling of :meth:`Engine.docker`."""
    return engine.docker(*args, check=check, input=input, timeout=timeout)
