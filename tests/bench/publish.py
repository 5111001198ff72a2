"""`packcache rebase --publish` against the naive way, on one real registry.

A plain test registry (docker-registry 2.8) and a 26.1-graphdriver engine that builds and
pushes a CNB run image v1 and v2 (three layers, one of ~RUN MiB of incompressible bytes) and
an app image on v1 (its own layers, one of ~APP MiB). Each repeat rebases the app onto v2
into a fresh repository of the same registry:

- packcache: `packcache rebase --publish` (a fresh process): manifests and configs read,
  run and app layers mounted, config and manifest pushed;
- naive: what a client that downloads the app's layers and uploads them again does (each app
  layer GET in full to a file, then POST + PUT without a HEAD or a mount; the run layers
  mounted, the same config and manifest pushed).

Layer bytes and requests are read from the registry's access log (requests during the run;
downloaded bytes = sizes of the layer GET answers) and, for uploads, from the blob sizes the
method sent. Printed, never asserted. PACKCACHE_BENCH_SIZE=quick: small layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import requests

from tests.bench.common import PACKCACHE, note, packcache_env, print_table, scaled, start_engine
from tests.cnb_images import build_app_image, build_run_image
from tests.registries.harness import RegistrySet

RUN_MIB = scaled(200, 8)
APP_MIB = scaled(100, 4)
REPEAT = int(os.environ.get("PACKCACHE_BENCH_REPEAT", "3"))


def _log_lines(registry) -> int:
    return len(registry.log_text().splitlines())


def _requests_since(registry, start: int) -> list[str]:
    """The access-log lines (one per request; the registry's own log lines are left out)."""
    lines = registry.log_text().splitlines()[start:]
    return [line for line in lines if line.startswith("127.0.0.1 - ")]


def _layer_bytes_got(lines: list[str], digests: set[str]) -> int:
    total = 0
    for line in lines:
        if '"GET ' in line and "/blobs/" in line and any(d in line for d in digests):
            status_and_size = line.split('"')[2].split()
            total += int(status_and_size[1]) if status_and_size[1].isdigit() else 0
    return total


def _packcache(registry, app_ref: str, run_ref: str, target: str) -> dict:
    args = [
        *PACKCACHE, "--cache-dir", tempfile.mkdtemp(prefix="pc-bench-"), "rebase", app_ref,
        "--publish", "--tag", target, "--run-image", run_ref,
        "--insecure-registry", registry.host, "--format", "json",
    ]  # fmt: skip
    done = subprocess.run(args, env=packcache_env(), capture_output=True, check=True)
    return json.loads(done.stdout)


def _repository(ref: str) -> str:
    return ref.split("/", 1)[1].rsplit(":", 1)[0]


def _naive(registry, refs: tuple[str, str], manifests: tuple[dict, dict], own: int, config, target):
    """Download each app layer in full, upload it again; mount the run layers."""
    base = registry.url
    app_manifest, run_manifest = manifests
    name, tag = _repository(target), target.rsplit(":", 1)[1]
    source, run_repo = _repository(refs[0]), _repository(refs[1])
    sent = 0
    work = Path(tempfile.mkdtemp(prefix="pc-naive-"))
    try:
        for layer in app_manifest["layers"][-own:]:
            path = work / layer["digest"][7:]
            url = f"{base}/v2/{source}/blobs/{layer['digest']}"
            with requests.get(url, stream=True) as got, open(path, "wb") as out:
                shutil.copyfileobj(got.raw, out, 1 << 20)
            start = requests.post(f"{base}/v2/{name}/blobs/uploads/")
            with open(path, "rb") as body:
                done = requests.put(
                    f"{start.headers['Location']}&digest={layer['digest']}", data=body
                )
            assert done.status_code == 201, done.text
            sent += layer["size"]
        for layer in run_manifest["layers"]:
            requests.post(
                f"{base}/v2/{name}/blobs/uploads/?mount={layer['digest']}&from={run_repo}"
            )
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        start = requests.post(f"{base}/v2/{name}/blobs/uploads/")
        requests.put(f"{start.headers['Location']}&digest={digest}", data=config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": app_manifest["mediaType"],
            "config": {**app_manifest["config"], "digest": digest, "size": len(config)},
            "layers": [*run_manifest["layers"], *app_manifest["layers"][-own:]],
        }
        requests.put(
            f"{base}/v2/{name}/manifests/{tag}",
            data=json.dumps(manifest).encode(),
            headers={"Content-Type": app_manifest["mediaType"]},
        ).raise_for_status()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sent


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="pc-bench-reg-"))
    registries = RegistrySet(root)
    engine = start_engine("26.1-graphdriver")
    try:
        registry = registries.plain
        work = Path(tempfile.mkdtemp(prefix="pc-bench-img-"))
        run_repo = f"{registry.host}/bench/run"
        run1 = build_run_image(engine, work, "v1", f"{run_repo}:v1", extra_bytes=RUN_MIB << 20)
        run2 = build_run_image(engine, work, "v2", f"{run_repo}:v2", extra_bytes=RUN_MIB << 20)
        app = build_app_image(
            engine, work, run1, f"{registry.host}/bench/app:1", run_name=run_repo,
            extra_bytes=APP_MIB << 20,
        )  # fmt: skip
        for tag in (run1.tag, run2.tag, app.tag):
            engine.docker("push", tag)
        accept = "application/vnd.docker.distribution.manifest.v2+json"
        get = lambda path: requests.get(f"{registry.url}/v2/{path}", headers={"Accept": accept})  # noqa: E731
        app_manifest = get("bench/app/manifests/1").json()
        run_manifest = get("bench/run/manifests/v2").json()
        own = len(app.app_diff_ids)
        layer_digests = {d["digest"] for d in app_manifest["layers"] + run_manifest["layers"]}
        app_layer_bytes = sum(d["size"] for d in app_manifest["layers"][-own:])
        rows, times = [], {"packcache": [], "naive": []}
        config = b""  # the rebased config, as packcache pushed it; the naive way sends it too
        for _ in range(REPEAT):
            for method in ("packcache", "naive"):
                target = f"{registry.host}/bench/out-{uuid.uuid4().hex[:8]}:1"
                mark = _log_lines(registry)
                start = time.perf_counter()
                if method == "packcache":
                    report = _packcache(registry, app.tag, run2.tag, target)
                else:
                    uploaded = _naive(
                        registry, (app.tag, run2.tag), (app_manifest, run_manifest), own,
                        config, target,
                    )  # fmt: skip
                seconds = time.perf_counter() - start
                if method == "packcache":  # the config is the one blob it sends besides layers
                    path = f"{_repository(target)}/blobs/{report['config_digest']}"
                    config = get(path).content
                    uploaded = report["bytes_uploaded"] - len(config)
                lines = _requests_since(registry, mark)
                times[method].append(seconds)
                rows.append((method, uploaded, _layer_bytes_got(lines, layer_digests), len(lines)))
        table = []
        for method in ("packcache", "naive"):
            mine = [r for r in rows if r[0] == method][-1]
            table.append(
                [
                    method,
                    f"{mine[1] / (1 << 20):.1f}",
                    f"{mine[2] / (1 << 20):.1f}",
                    str(mine[3]),
                    f"{statistics.median(times[method]):.2f}",
                ]
            )
        print_table(
            f"rebase --publish, app layers {app_layer_bytes / (1 << 20):.0f} MiB "
            f"(median of {REPEAT})",
            ["method", "layer MiB up", "layer MiB down", "requests", "wall s"],
            table,
        )
        ratio = statistics.median(times["naive"]) / statistics.median(times["packcache"])
        started = time.perf_counter()
        subprocess.run([*PACKCACHE, "--help"], capture_output=True, check=True)
        startup = time.perf_counter() - started
        note(
            f"rebase --publish: naive / packcache wall time {ratio:.2f} (packcache is a fresh "
            f"process: `packcache --help` takes {startup:.2f} s here; the naive way runs in the "
            f"bench's process); load {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
    finally:
        engine.stop()
        registries.stop_all()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
