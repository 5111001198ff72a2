"""The README's example session, run for real: `python -m tests.readme_session` starts a
private Engine 20.10, builds CNB-shaped images in it and prints each command with its output,
as it is pasted into the README ("### Examples")."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cnb_images import build_app_image, build_run_image
from tests.engines.harness import Engine


def main() -> None:
    engine = Engine("20.10-graphdriver").start()
    try:
        with tempfile.TemporaryDirectory(prefix="packcache-readme-") as tmp:
            session(engine, Path(tmp))
    finally:
        engine.stop()


def session(engine: Engine, work: Path) -> None:
    run1 = build_run_image(engine, work, "v1", "cnbs/run:v1", extra_bytes=30 << 20)
    build_run_image(engine, work, "v2", "cnbs/run:v2", extra_bytes=30 << 20)
    build_app_image(engine, work, run1, "my-app:latest", run_name="cnbs/run", extra_bytes=5 << 20)
    env = {**os.environ, "PACKCACHE_DIR": str(work / "cache"), "DOCKER_HOST": engine.host}
    env.pop("PACKCACHE_MAX_SIZE", None)

    def run(line: str) -> None:
        print(f"$ {line}", flush=True)
        words = shlex.split(line)
        if words[0] == "docker":
            engine.docker(*words[1:])
            return
        done = subprocess.run(
            [sys.executable, "-m", "packcache", *words[1:]], env=env, capture_output=True, text=True
        )
        print(done.stdout + done.stderr, end="", flush=True)

    for line in (
        "packcache import cnbs/run:v1 my-app",
        "packcache ls --image my-app",
        "packcache du",
        "docker rmi my-app",
        "packcache load my-app",
        "packcache rebase my-app --run-image cnbs/run:v2 --pull-policy if-not-present",
        "packcache ls --format 'table {{.DiffID}}\\t{{.Size}}\\t{{join .Images \", \"}}'",
        "packcache prune --max-size 20M --dry-run",
        "packcache load nope:1",
        "packcache verify",
    ):
        run(line)


if __name__ == "__main__":
    main()
