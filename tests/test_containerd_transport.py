"""The containerd transport against the real containerd of the containerd-store test engines.

An image made by writing only its config and manifest into the daemon's content store (its
layers already there from a `docker load`) and creating its image record must be, for the
daemon, an image like any loaded one: listed, inspected, saved whole, run, removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from packcache.errors import CorruptBlobError
from packcache.transports.containerd import (
    WRITE_CHUNK,
    Containerd,
    ContainerdError,
    Descriptor,
    Endpoint,
    find_endpoint,
    gc_ref_labels,
)
from tests.engines import images
from tests.engines.harness import ENGINE_KINDS, Engine
from tests.engines.pytest_plugin import EnginePool

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

# containerd 1.7 and 2.1: the v1 services must read the same on both.
CONTAINERD_KINDS = [kind for kind, spec in ENGINE_KINDS.items() if spec.containerd_store]
GRAPHDRIVER_KINDS = [kind for kind, spec in ENGINE_KINDS.items() if not spec.containerd_store]


def endpoint_of(engine: Engine) -> Endpoint:
    """What packcache finds for this engine: its info where the API says, else the settings."""
    settings = {
        # The harness's own layout: containerd at <root>/c.sock, namespace pc-<root name>.
        "PACKCACHE_CONTAINERD_ADDRESS": str(engine.root / "c.sock"),
        "PACKCACHE_CONTAINERD_NAMESPACE": f"pc-{engine.root.name}",
    }
    return find_endpoint(engine.info(), settings)


@pytest.fixture(params=CONTAINERD_KINDS)
def engine(request: pytest.FixtureRequest, engine_pool: EnginePool) -> Engine:
    return engine_pool.get(request.param)


def chunks_of(data: bytes, size: int = WRITE_CHUNK) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_endpoint_matches_the_engine(engine: Engine) -> None:
    found = endpoint_of(engine)
    assert found.address == str(engine.root / "c.sock")
    assert found.namespace == f"pc-{engine.root.name}"
    api = tuple(int(part) for part in engine.api_version.split("."))
    # API 1.46+: the daemon itself says where; older ones leave it to the settings.
    assert found.source == ("daemon info" if api >= (1, 46) else "environment")


# A fresh process: connect (the namespace taken as the daemon's: a fresh engine may have none
# yet), then say whether grpc's asyncio API was imported, and whether an import of it asked for
# afterwards gets the real one.
CONNECT_THEN_IMPORT_AIO = (
    "import json, sys\n"
    "from packcache.transports.containerd import Containerd, Endpoint\n"
    "Containerd(Endpoint(sys.argv[1], sys.argv[2], 'daemon info')).close()\n"
    "loaded = 'grpc.aio' in sys.modules\n"
    "import grpc.aio\n"
    "print(json.dumps([loaded, hasattr(grpc.aio, 'insecure_channel')]))"
)


def test_a_connection_leaves_grpc_asyncio_api_unimported_yet_importable(engine: Engine) -> None:
    found = endpoint_of(engine)
    code = [sys.executable, "-c", CONNECT_THEN_IMPORT_AIO, found.address, found.namespace]
    proc = subprocess.run(code, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [False, True]


def test_an_image_made_of_metadata_only_is_a_whole_image(engine: Engine, tmp_path: Path) -> None:
    tag = f"packcache-cd/base-{engine.root.name}:1"
    payload = os.urandom(3 * WRITE_CHUNK + 17)  # a layer sent over several write messages
    built = images.build_busybox_archive(tmp_path / "base.tar", tag, [{"payload.bin": payload}])
    engine.docker("load", "-i", str(built.path))
    name = f"docker.io/packcache-cd/made-{engine.root.name}:1"
    config = dict(built.config)
    config["config"] = {**config["config"], "Labels": {"made.by": "packcache"}}
    config_bytes = images.canonical_json(config)
    with Containerd(endpoint_of(engine)) as ctd:
        # docker load keeps uncompressed layers as they were: blob digest = diffID.
        layer_sizes = [ctd.blob_size(d) for d in built.diff_ids]
        assert None not in layer_sizes
        layers = [
            {"mediaType": OCI_LAYER, "digest": d, "size": s}
            for d, s in zip(built.diff_ids, layer_sizes, strict=True)
        ]
        config_digest = images.sha256_digest(config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": layers,
        }
        manifest_bytes = images.canonical_json(manifest)
        manifest_digest = images.sha256_digest(manifest_bytes)
        with ctd.lease() as lease:
            assert ctd.write_blob(config_digest, len(config_bytes), [config_bytes], lease)
            labels = gc_ref_labels(config_digest, built.diff_ids)
            written = ctd.write_blob(
                manifest_digest, len(manifest_bytes), chunks_of(manifest_bytes, 7), lease, labels
            )
            assert written
            # Already there: detected, not written again.
            assert not ctd.write_blob(config_digest, len(config_bytes), [config_bytes], lease)
            target = Descriptor(OCI_MANIFEST, manifest_digest, len(manifest_bytes))
            ctd.put_image(name, target, {"made.by": "packcache"})
            assert lease in ctd.lease_ids()
        assert lease not in ctd.lease_ids()
        assert ctd.blob_labels(manifest_digest) == labels
        record = ctd.get_image(name)
        assert record is not None
        assert (record.target.digest, record.target.size) == (manifest_digest, len(manifest_bytes))
        assert record.labels == {"made.by": "packcache"}

    listed = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.decode()
    short = name.removeprefix("docker.io/")
    assert short in listed.split()
    inspected = json.loads(engine.docker("image", "inspect", short).stdout)[0]
    assert inspected["Config"]["Labels"] == {"made.by": "packcache"}
    assert inspected["RootFS"]["Layers"] == built.diff_ids

    saved = tmp_path / "saved.tar"
    engine.docker("save", "-o", str(saved), short)
    with tarfile.open(saved) as tar:
        blobs = {
            "sha256:" + m.name.rsplit("/", 1)[1]: m for m in tar if m.name.startswith("blobs/")
        }
        for digest in [manifest_digest, config_digest, *built.diff_ids]:
            data = tar.extractfile(blobs[digest]).read()  # type: ignore[union-attr]
            assert images.sha256_digest(data) == digest

    # The first run unpacks the layers the daemon never unpacked for this image.
    out = engine.docker(
        "run", "--pull", "never", "--rm", "--network", "none", short, "sha256sum", "/payload.bin"
    ).stdout.decode()
    assert out.split()[0] == images.sha256_digest(payload).removeprefix("sha256:")

    engine.docker("rmi", short)
    assert engine.docker("image", "inspect", short, check=False).returncode != 0
    with Containerd(endpoint_of(engine)) as ctd:
        assert ctd.get_image(name) is None
        collect_garbage(ctd)
        # Released to GC: what only this image held is gone, the shared layers stay.
        assert ctd.blob_size(manifest_digest) is None
        assert ctd.blob_size(config_digest) is None
        assert None not in [ctd.blob_size(d) for d in built.diff_ids]
        engine.docker("rmi", tag)
        collect_garbage(ctd)
        # The busybox layer may be shared with other tests' images; the payload is this test's.
        assert ctd.blob_size(built.diff_ids[-1]) is None


def collect_garbage(ctd: Containerd) -> None:
    """Run containerd's GC now: deleting an image record with sync waits for a collection."""
    target = Descriptor(OCI_MANIFEST, "sha256:" + "0" * 64, 1)
    ctd.put_image("packcache-test/gc-trigger:1", target)
    assert ctd.delete_image("packcache-test/gc-trigger:1", collect=True)


def test_update_repoints_an_existing_record(engine: Engine) -> None:
    name = f"docker.io/packcache-cd/repoint-{engine.root.name}:1"
    with Containerd(endpoint_of(engine)) as ctd:
        first = Descriptor(OCI_MANIFEST, "sha256:" + "1" * 64, 10)
        second = Descriptor(OCI_MANIFEST, "sha256:" + "2" * 64, 20)
        ctd.put_image(name, first, {"old": "label"})
        ctd.put_image(name, second, {"new": "label"})
        record = ctd.get_image(name)
        assert record is not None
        assert (record.target.digest, record.labels) == (second.digest, {"new": "label"})
        assert ctd.delete_image(name)
        assert ctd.get_image(name) is None
        assert not ctd.delete_image(name)


def test_a_record_said_to_exist_is_updated_or_else_created(engine: Engine) -> None:
    name = f"docker.io/packcache-cd/known-{engine.root.name}:1"
    with Containerd(endpoint_of(engine)) as ctd:
        first = Descriptor(OCI_MANIFEST, "sha256:" + "3" * 64, 30)
        second = Descriptor(OCI_MANIFEST, "sha256:" + "4" * 64, 40)
        # Said to exist but gone meanwhile (another process removed it): created all the same.
        ctd.put_image(name, first, {"old": "label"}, exists=True)
        record = ctd.get_image(name)
        assert record is not None
        assert (record.target.digest, record.labels) == (first.digest, {"old": "label"})
        ctd.put_image(name, second, exists=True)  # there: repointed, its labels replaced
        record = ctd.get_image(name)
        assert record is not None
        assert (record.target.digest, record.labels) == (second.digest, {})
        assert ctd.delete_image(name)


def test_a_blob_with_the_wrong_digest_is_refused_and_leaves_nothing(engine: Engine) -> None:
    data = os.urandom(2 * WRITE_CHUNK + 5)
    claimed = images.sha256_digest(data + b"x")
    with Containerd(endpoint_of(engine)) as ctd:
        with ctd.lease() as lease, pytest.raises(ContainerdError, match="refused writing"):
            ctd.write_blob(claimed, len(data), chunks_of(data), lease)
        assert ctd.blob_size(claimed) is None
        assert ctd.blob_size(images.sha256_digest(data)) is None
        assert not [ref for ref in ctd.ingest_refs() if claimed in ref]
        assert lease not in ctd.lease_ids()


def test_a_short_stream_is_refused_and_leaves_nothing(engine: Engine) -> None:
    data = os.urandom(1000)
    digest = images.sha256_digest(data)
    with Containerd(endpoint_of(engine)) as ctd, ctd.lease() as lease:
        with pytest.raises(ContainerdError):
            ctd.write_blob(digest, len(data), [data[:500]], lease)
        assert ctd.blob_size(digest) is None
        assert not [ref for ref in ctd.ingest_refs() if digest in ref]


def test_an_unknown_namespace_is_one_clear_error(engine: Engine) -> None:
    found = endpoint_of(engine)
    wrong = Endpoint(found.address, "no-such-namespace", "environment")
    with pytest.raises(ContainerdError, match="has no namespace 'no-such-namespace'"):
        Containerd(wrong)


def test_a_blob_written_in_small_chunks_is_stored_and_deleted(engine: Engine) -> None:
    data = os.urandom(WRITE_CHUNK + 1)
    digest = images.sha256_digest(data)
    # Deleted while the lease holds it: once the lease is gone containerd's GC may take the
    # unreferenced blob at any moment.
    with Containerd(endpoint_of(engine)) as ctd, ctd.lease() as lease:
        assert ctd.write_blob(digest, len(data), chunks_of(data, 4096), lease)
        assert ctd.blob_size(digest) == len(data)
        assert ctd.delete_blob(digest)
        assert ctd.blob_size(digest) is None
        assert not ctd.delete_blob(digest)


def test_an_unprivileged_user_gets_permission_denied(engine: Engine) -> None:
    # containerd's socket is root's (0660): what a user outside its group meets.
    found = endpoint_of(engine)
    code = (
        "import sys\n"
        "from packcache.transports.containerd import Containerd, ContainerdError, Endpoint\n"
        "try:\n"
        f"    Containerd(Endpoint({found.address!r}, {found.namespace!r}, 'test'))\n"
        "except ContainerdError as exc:\n"
        "    sys.exit(str(exc))\n"
    )
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(
        [*nobody, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        f"permission denied on containerd's socket {found.address}: "
        "run as root or with the socket's group"
    )


def test_a_failing_reader_raises_its_own_error_and_leaves_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    built = images.build_busybox_archive(tmp_path / "b.tar", "packcache-cd/reader:1")
    engine.docker("load", "-i", str(built.path))  # the daemon's namespace now exists
    # Repeated: an abort racing the end of a cancelled write on the server was a rare loss.
    with Containerd(endpoint_of(engine)) as ctd:
        for _ in range(25):
            data = os.urandom(3 * WRITE_CHUNK)
            digest = images.sha256_digest(data)

            def reader(data: bytes = data) -> Iterator[bytes]:
                yield data[:WRITE_CHUNK]
                raise CorruptBlobError("the cached blob no longer matches its name")

            with ctd.lease() as lease, pytest.raises(CorruptBlobError, match="no longer matches"):
                ctd.write_blob(digest, len(data), reader(), lease)
            assert ctd.blob_size(digest) is None
            assert not [ref for ref in ctd.ingest_refs() if digest in ref]
            assert lease not in ctd.lease_ids()


def test_containerd_down_mid_write_is_one_clear_error(tmp_path: Path) -> None:
    # A private engine: its containerd is killed, which the shared engines must not see.
    with Engine(CONTAINERD_KINDS[0]) as engine:
        built = images.build_busybox_archive(tmp_path / "b.tar", "packcache-cd/down:1")
        engine.docker("load", "-i", str(built.path))  # the daemon's namespace now exists
        data = os.urandom(2 * WRITE_CHUNK)
        digest = images.sha256_digest(data)
        assert engine.containerd_pid is not None
        with Containerd(endpoint_of(engine)) as ctd:

            def reader() -> Iterator[bytes]:
                yield data[:WRITE_CHUNK]
                os.kill(engine.containerd_pid, signal.SIGKILL)  # type: ignore[arg-type]
                os.waitpid(engine.containerd_pid, 0)  # type: ignore[arg-type]
                yield data[WRITE_CHUNK:]

            with pytest.raises(ContainerdError) as raised, ctd.lease() as lease:
                ctd.write_blob(digest, len(data), reader(), lease)
        assert str(raised.value).startswith(f"cannot reach containerd at {engine.root}/c.sock")
