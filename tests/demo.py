"""`make demo`: the main job, start to end, on this machine.

Uses the reachable Docker daemon ($DOCKER_HOST or /var/run/docker.sock), else starts a private
engine (PACKCACHE_DEMO_ENGINE, default 26.1-containerd: Docker's containerd image store, where
pack re-sends every run-image layer). Builds small CNB-shaped images, rebases an app image the
way pack does (--no-cache), then cold and warm with the cache, and prints the timings; ends with
`packcache ls` and `packcache du`. The demo's cache is a temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.cnb_images import build_app_image, build_run_image, unique
from tests.engines.harness import DOCKER_CLI, Engine, EngineError

DEFAULT_HOST = "unix:///var/run/docker.sock"
RUN_MB = int(os.environ.get("PACKCACHE_DEMO_RUN_MB", "150"))  # run image payload
APP_MB = int(os.environ.get("PACKCACHE_DEMO_APP_MB", "20"))  # app layer payload


class ReachableDaemon:
    """The user's own daemon, spoken to through the docker CLI like the harness's engines."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.kind = "your daemon"

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [DOCKER_CLI, *args], env={**os.environ, "DOCKER_HOST": self.host}, capture_output=True
        )
        if check and proc.returncode != 0:
            raise EngineError(f"docker {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
        return proc

    def stop(self) -> None:
        pass


def reachable_daemon() -> ReachableDaemon | None:
    host = os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    if not host.startswith("unix://") or not Path(host[len("unix://") :]).exists():
        return None
    daemon = ReachableDaemon(host)
    return daemon if daemon.docker("version", check=False).returncode == 0 else None


def packcache(cache: Path, host: str, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "packcache", "--cache-dir", str(cache), "--host", host, *args],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"packcache {' '.join(args)} failed:\n{done.stderr}")
    return seconds, done.stdout


def main() -> None:
    daemon = reachable_daemon()
    if daemon is None:
        kind = os.environ.get("PACKCACHE_DEMO_ENGINE", "26.1-containerd")
        print(f"No Docker daemon reachable: starting a private {kind} engine ...")
        daemon = Engine(kind).start()
    try:
        run_demo(daemon)
    finally:
        daemon.stop()


def run_demo(daemon) -> None:
    with tempfile.TemporaryDirectory(prefix="packcache-demo-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        repo = unique("demo-run").rsplit(":", 1)[0]
        print(f"Building CNB-shaped images in {daemon.kind} ({daemon.host}) ...")
        run1 = build_run_image(daemon, work, "v1", f"{repo}:v1", extra_bytes=RUN_MB << 20)
        run2 = build_run_image(daemon, work, "v2", f"{repo}:v2", extra_bytes=RUN_MB << 20)
        app = build_app_image(
            daemon, work, run1, unique("demo-app"), run_name=repo, extra_bytes=APP_MB << 20
        )
        original = unique("demo-app-on-v1")
        daemon.docker("tag", app.tag, original)  # kept, to start each rebase from the same app
        print(f"  run images {run1.tag}, {run2.tag} (~{RUN_MB} MB each)")
        print(f"  app {app.tag} on v1 (~{APP_MB} MB of app layers)\n")

        rows = []
        for label, extra in (
            ("pack's method (--no-cache)", ["--no-cache"]),
            ("packcache, cold (empty cache)", []),
            ("packcache, warm", []),
        ):
            daemon.docker("tag", original, app.tag)  # start each from the app on v1
            seconds, _ = packcache(
                cache,
                daemon.host,
                "rebase",
                app.tag,
                "--run-image",
                run2.tag,
                "--pull-policy",
                "never",
                *extra,
                "--report",
                str(work / "report.json"),
            )
            report = json.loads((work / "report.json").read_text())
            rows.append((label, seconds, report))
            # Remove the result, so that each rebase has to deliver the app layers again.
            daemon.docker("rmi", app.tag)

        pack_seconds = rows[0][1]
        print(f"{'rebase':32} {'seconds':>8} {'vs pack':>8}  {'layers sent':>11}  docker save of")
        for label, seconds, report in rows:
            total = report["layers_sent"] + report["layers_reused"]
            print(
                f"{label:32} {seconds:8.2f} {pack_seconds / seconds:7.1f}x  "
                f"{report['layers_sent']:>5} of {total:<3}"
                f"  {', '.join(report['saved']) or 'nothing'}"
            )
        print("\n$ packcache ls")
        print(packcache(cache, daemon.host, "ls")[1])
        print("$ packcache du")
        print(packcache(cache, daemon.host, "du")[1])


if __name__ == "__main__":
    main()
