"""Fetch Debian's docker-registry (distribution 2.8) into the engines dir without installing it.

Usage (from the repo root, as root)::

    python -m tests.registries.provision [--force]

The same way tests/engines/provision.py fetches engines: a throw-away apt configuration,
``apt-get download`` and ``dpkg -x`` into ``<engines dir>/registry/root``, a marker file that
makes re-runs a no-op.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.engines import provision as engines

BUNDLE = "registry"
SUITE = "bookworm"
PACKAGES = ("docker-registry",)
BINARY = "usr/bin/docker-registry"
LAYOUT_VERSION = 1


def registry_binary(engines_dir: Path | None = None) -> Path:
    return engines.bundle_root(engines_dir or engines.default_dir(), BUNDLE) / BINARY


def read_marker(engines_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((engines_dir / BUNDLE / engines.MARKER).read_text())
    except (OSError, ValueError):
        return None
    if data.get("layout") != LAYOUT_VERSION or data.get("packages_wanted") != list(PACKAGES):
        return None
    return data  # type: ignore[no-any-return]


def is_provisioned(engines_dir: Path | None = None) -> bool:
    engines_dir = engines_dir or engines.default_dir()
    return read_marker(engines_dir) is not None and registry_binary(engines_dir).exists()


def provision(engines_dir: Path | None = None, *, force: bool = False) -> str:
    """Fetch and unpack the registry unless already there; return a line saying what happened."""
    engines_dir = (engines_dir or engines.default_dir()).resolve()
    with engines.locked(engines_dir):
        if not force and is_provisioned(engines_dir):
            return f"ok      {BUNDLE:8} (already provisioned: {read_marker(engines_dir)})"
        uri, signed_by = engines.machine_debian_source()
        work = engines_dir / ".apt-registry"
        try:
            apt = engines.SuiteApt(work, SUITE, uri, signed_by)
            debs = apt.download(PACKAGES, work / "debs")
            versions = {
                engines.deb_field(d, "Package"): engines.deb_field(d, "Version") for d in debs
            }
            base = engines_dir / BUNDLE
            tmp = base / "root.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for deb in debs:
                subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
            problems = engines.ldd_problems(tmp / BINARY)
            if problems:
                raise engines.ProvisionError(f"docker-registry cannot run here: {problems}")
            shutil.rmtree(tmp / "usr/share", ignore_errors=True)
            shutil.rmtree(base / "root", ignore_errors=True)
            tmp.rename(base / "root")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        marker = {
            "layout": LAYOUT_VERSION,
            "bundle": BUNDLE,
            "suite": SUITE,
            "packages_wanted": list(PACKAGES),
            "versions": versions,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (base / engines.MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        return f"fetched {BUNDLE:8} from {SUITE:8}: " + ", ".join(
            f"{p} {v}" for p, v in sorted(versions.items())
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.registries.provision", description=__doc__)
    ap.add_argument("--dir", type=Path, default=None, help="default: the engines dir")
    ap.add_argument("--force", action="store_true", help="re-fetch even if a marker exists")
    args = ap.parse_args(argv)
    try:
        print(provision(args.dir, force=args.force), flush=True)
    except (engines.ProvisionError, subprocess.CalledProcessError, OSError) as exc:
        print(f"provision: ERROR: registry: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
