"""Fetch private Docker engine binaries from Debian suites without installing them.

Usage (from the repo root, as root)::

    python -m tests.engines.provision [--dir DIR] [--force] [--only BUNDLE ...]

Every bundle is fetched with a throw-away apt sources list / lists dir / cache dir (so
the machine's apt state is never touched), downloaded with ``apt-get download`` and
unpacked with ``dpkg -x`` into ``DIR/<bundle>/root``.  A marker file per bundle makes
re-runs a no-op.  Nothing is installed, no global path is written.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER = ".provisioned.json"
# Bump when the layout or package set changes so old markers are not trusted.
LAYOUT_VERSION = 2


@dataclass(frozen=True)
class Bundle:
    """One folder of unpacked Debian packages."""

    name: str  # folder name under DIR
    suite: str  # Debian suite the packages come from
    packages: tuple[str, ...]
    # The docker.io version must start with this; guards against a suite moving on
    # (e.g. sid jumping to 29.x) while the engine kind is still called "28".
    docker_version_prefix: str | None = None


BUNDLES: dict[str, Bundle] = {
    b.name: b
    for b in (
        # bookworm runc (glibc 2.34+) is shared by every engine: trixie/sid runc need
        # GLIBC_2.38, which bookworm does not have.
        Bundle("runc", "bookworm", ("runc",)),
        # static busybox for test images (so `docker run` has something to exec).
        Bundle("busybox", "bookworm", ("busybox-static",)),
        # tini provides tini-static, the target of docker.io's docker-init symlink
        # (only used by `docker run --init`); bookworm's is static and runs anywhere.
        Bundle("20.10", "bookworm", ("docker.io", "containerd", "tini"), "20.10."),
        Bundle("26.1", "trixie", ("docker.io", "containerd"), "26.1."),
        # The engine whose API (1.48+) reports an image's missing content.
        Bundle("28", "sid", ("docker.io", "containerd"), "28."),
    )
}
# tini-static from bookworm is copied into the newer bundles (their own tini needs
# glibc 2.38) so docker-init resolves inside each bundle.
TINI_FROM = "20.10"

# Unpacked files no test needs (CLIs, test fixtures, docs): ~100 MiB less on disk.
PRUNE = (
    "usr/share",
    "etc",
    "usr/bin/docker",  # the machine's /usr/local/bin/docker is the client under test
    "usr/bin/dnet",
    "usr/sbin/ovrouter",
    "usr/lib/containerd",  # sid: runc-fp / shim-runc-fp test helpers
    "usr/lib/cni",
)

# Executables that must start on this machine's glibc (checked with ldd after unpacking).
CHECK_BINARIES: dict[str, tuple[str, ...]] = {
    "runc": ("usr/sbin/runc",),
    "busybox": ("bin/busybox",),
    "20.10": ("usr/sbin/dockerd", "usr/bin/containerd", "usr/bin/containerd-shim-runc-v2"),
    "26.1": ("usr/sbin/dockerd", "usr/bin/containerd", "usr/bin/containerd-shim-runc-v2"),
    "28": ("usr/sbin/dockerd", "usr/bin/containerd", "usr/bin/containerd-shim-runc-v2"),
}


class ProvisionError(RuntimeError):
    pass


def default_dir() -> Path:
    env = os.environ.get("PACKCACHE_ENGINES_DIR")
    return Path(env).resolve() if env else REPO_ROOT / ".engines"


def bundle_root(engines_dir: Path, bundle: str) -> Path:
    return engines_dir / bundle / "root"


def read_marker(engines_dir: Path, bundle: str) -> dict[str, object] | None:
    path = engines_dir / bundle / MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    b = BUNDLES[bundle]
    if data.get("layout") != LAYOUT_VERSION or data.get("packages_wanted") != list(b.packages):
        return None
    return data  # type: ignore[no-any-return]


def is_provisioned(engines_dir: Path, bundle: str) -> bool:
    return read_marker(engines_dir, bundle) is not None


# --------------------------------------------------------------------------- apt source


def machine_debian_source() -> tuple[str, str | None]:
    """Return (URI, signed-by keyring or None) of the machine's main Debian archive.

    Only the suite is changed later, so whatever mirror/proxy the machine is set up
    with is what we use too.
    """
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for stanza in re.split(r"\n\s*\n", deb822.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            types = fields.get("types", "").split()
            suites = fields.get("suites", "").split()
            # The main archive stanza has a plain codename suite (not -security/-updates).
            if "deb" in types and any("-" not in s for s in suites) and fields.get("uris"):
                return fields["uris"].split()[0], fields.get("signed-by")
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            m = re.match(
                r"^\s*deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)", line
            )
            if m and "-" not in m["suite"] and "security" not in m["uri"]:
                signed = re.search(r"signed-by=(\S+)", m["opts"] or "")
                return m["uri"], signed.group(1) if signed else None
    raise ProvisionError("no Debian 'deb' source found in /etc/apt/sources.list(.d)")


class SuiteApt:
    """A throw-away apt configuration for one suite; shares nothing with the system's."""

    def __init__(self, work: Path, suite: str, uri: str, signed_by: str | None) -> None:
        self.dir = work / suite
        self.suite = suite
        lists = self.dir / "lists"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        opts = f"[signed-by={signed_by}] " if signed_by else ""
        sources = self.dir / "sources.list"
        sources.write_text(f"deb {opts}{uri} {suite} main\n")
        self.flags = [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={lists}",
            # Own cache too: otherwise apt rewrites /var/cache/apt/*.bin with this suite.
            "-o", f"Dir::Cache={self.dir / 'cache'}",
        ]  # fmt: skip
        self.updated = False

    def _run(self, args: list[str], cwd: Path | None = None) -> str:
        cmd = ["apt-get", "-q", *self.flags, *args]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ProvisionError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        return proc.stdout

    def update(self) -> None:
        if not self.updated:
            self._run(["update"])
            self.updated = True

    def download(self, packages: tuple[str, ...], dest: Path) -> list[Path]:
        self.update()
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("*.deb"):
            old.unlink()
        # The debs dir belongs to root, not _apt: download as root (quietly) instead of
        # apt warning about an unsandboxed download every time.
        self._run(["-o", "APT::Sandbox::User=root", "download", *packages], cwd=dest)
        debs = sorted(dest.glob("*.deb"))
        got = {deb_field(d, "Package") for d in debs}
        missing = set(packages) - got
        if missing:
            raise ProvisionError(f"{self.suite}: apt-get download did not fetch {sorted(missing)}")
        return debs


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True, text=True
    ).stdout.strip()


# --------------------------------------------------------------------------- checks


def ldd_problems(binary: Path) -> list[str]:
    """Lines of `ldd` output that mean the binary cannot start here (missing lib/GLIBC)."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if "not a dynamic executable" in out or "statically linked" in out:
        return []
    return [ln.strip() for ln in out.splitlines() if "not found" in ln]


def dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


# --------------------------------------------------------------------------- provisioning


@contextmanager
def locked(engines_dir: Path) -> Iterator[None]:
    # Two pytest sessions (or a user + CI) may provision at once: serialize them.
    engines_dir.mkdir(parents=True, exist_ok=True)
    with open(engines_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def provision_bundle(
    engines_dir: Path, bundle: Bundle, apt: SuiteApt, log: Callable[[str], None]
) -> dict[str, object]:
    base = engines_dir / bundle.name
    root = base / "root"
    debs_dir = engines_dir / ".apt" / bundle.suite / "debs" / bundle.name
    debs = apt.download(bundle.packages, debs_dir)
    versions = {deb_field(d, "Package"): deb_field(d, "Version") for d in debs}
    if bundle.docker_version_prefix:
        v = versions.get("docker.io", "")
        if not v.startswith(bundle.docker_version_prefix):
            raise ProvisionError(
                f"{bundle.suite} has docker.io {v}, not {bundle.docker_version_prefix}x: "
                f"bundle {bundle.name!r} cannot be provisioned from this suite any more"
            )
    # Unpack into a fresh tmp dir and rename: an interrupted run never leaves a
    # half-populated root behind a marker.
    tmp = base / "root.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
    for rel in PRUNE:
        target = tmp / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    if bundle.name not in ("runc", "busybox", TINI_FROM):
        tini = bundle_root(engines_dir, TINI_FROM) / "usr/bin/tini-static"
        if tini.exists():
            shutil.copy2(tini, tmp / "usr/bin/tini-static")
    needed = CHECK_BINARIES.get(bundle.name, ())
    missing = [rel for rel in needed if not (tmp / rel).exists()]
    if missing:
        raise ProvisionError(f"{bundle.name}: packages lack {missing}")
    bad = {rel: p for rel in needed if (p := ldd_problems(tmp / rel))}
    if bad:
        raise ProvisionError(f"{bundle.name}: binaries cannot run on this machine: {bad}")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    shutil.rmtree(debs_dir, ignore_errors=True)  # the unpacked tree is all we need
    marker = {
        "layout": LAYOUT_VERSION,
        "bundle": bundle.name,
        "suite": bundle.suite,
        "packages_wanted": list(bundle.packages),
        "versions": versions,
        "size_bytes": dir_size(root),
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (base / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    log(
        f"fetched {bundle.name:8} from {bundle.suite:8}: "
        + ", ".join(f"{p} {v}" for p, v in sorted(versions.items()))
        + f" ({marker['size_bytes'] // (1 << 20)} MiB)"  # type: ignore[operator]
    )
    return marker


def provision(
    engines_dir: Path | None = None,
    *,
    force: bool = False,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Provision bundles (all, or those named in `only`), reporting each through log.

    Raises ProvisionError when a bundle cannot be fetched: every engine is required.
    """
    engines_dir = (engines_dir or default_dir()).resolve()
    if os.geteuid() != 0:
        raise ProvisionError("run as root (apt-get update/download with private dirs needs it)")
    unknown = sorted(set(only or ()) - set(BUNDLES))
    if unknown:
        raise ProvisionError(f"unknown bundles {unknown}; known: {sorted(BUNDLES)}")
    wanted = [b for b in BUNDLES.values() if not only or b.name in only]
    with locked(engines_dir):
        todo = [b for b in wanted if force or not is_provisioned(engines_dir, b.name)]
        for b in wanted:
            if b not in todo:
                m = read_marker(engines_dir, b.name) or {}
                log(f"ok      {b.name:8} (already provisioned: {m.get('versions')})")
        if not todo:
            return
        uri, signed_by = machine_debian_source()
        work = engines_dir / ".apt"
        apts: dict[str, SuiteApt] = {}
        try:
            # Bundle order matters: 20.10 (with tini) before the bundles that copy it.
            for b in todo:
                apt = apts.setdefault(b.suite, SuiteApt(work, b.suite, uri, signed_by))
                try:
                    provision_bundle(engines_dir, b, apt, log)
                except (ProvisionError, subprocess.CalledProcessError, OSError) as exc:
                    raise ProvisionError(f"bundle {b.name!r}: {exc}") from exc
        finally:
            # Package lists are ~20 MB a suite and only needed while fetching.
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.engines.provision", description=__doc__)
    ap.add_argument(
        "--dir", type=Path, default=None, help="default: $PACKCACHE_ENGINES_DIR or <repo>/.engines"
    )
    ap.add_argument("--force", action="store_true", help="re-fetch even if a marker exists")
    ap.add_argument(
        "--only", nargs="+", metavar="BUNDLE", help=f"fetch only these, of {', '.join(BUNDLES)}"
    )
    args = ap.parse_args(argv)
    engines_dir = (args.dir or default_dir()).resolve()
    t0 = time.monotonic()
    try:
        provision(
            engines_dir,
            force=args.force,
            only=args.only,
            log=lambda line: print(line, flush=True),
        )
    except ProvisionError as exc:
        print(f"provision: ERROR: {exc}", file=sys.stderr)
        return 1
    total = sum(dir_size(engines_dir / b) for b in BUNDLES if (engines_dir / b).exists())
    print(f"engines dir {engines_dir}: {total / (1 << 20):.0f} MiB, {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
