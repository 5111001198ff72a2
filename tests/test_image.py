"""The image vocabulary: an inspect read once into types, the CNB metadata label, chain IDs and
the OCI documents a load carries."""

from __future__ import annotations

import hashlib
import json

import pytest

from packcache.image import cnb
from packcache.image.config import config_diff_ids
from packcache.image.inspected import InspectedImage
from packcache.image.layer import chain_ids
from packcache.image.manifest import Descriptor, digest_of, image_index, image_manifest
from packcache.image.mediatypes import LAYER_MEDIA_TYPES, OCI_CONFIG, OCI_MANIFEST

A, B, C = ("sha256:" + c * 64 for c in "abc")


def test_chain_ids_name_each_prefix() -> None:
    ab = "sha256:" + hashlib.sha256(f"{A} {B}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {C}".encode()).hexdigest()
    assert chain_ids([A, B, C]) == [A, ab, abc]
    assert chain_ids([]) == []


def test_an_inspect_with_sections_missing_reads_as_empty_values() -> None:
    image = InspectedImage.from_inspect({"Id": A, "RootFS": None, "Config": None})
    assert image.id == A
    assert image.diff_ids == () and image.repo_tags == ()
    assert dict(image.labels) == {} and image.config.env == ()
    assert image.platform == "linux/"


def test_an_inspect_reads_every_field() -> None:
    image = InspectedImage.from_inspect(
        {
            "Id": A,
            "RepoTags": ["app:latest"],
            "RepoDigests": ["app@" + B],
            "RootFS": {"Type": "layers", "Layers": [B, C]},
            "Os": "linux",
            "Architecture": "arm64",
            "Variant": "v8",
            "Config": {
                "Env": ["PATH=/bin", "CNB_USER_ID=1000", "EMPTY"],
                "Labels": {"io.buildpacks.stack.id": "s"},
                "User": "cnb",
                "WorkingDir": "/workspace",
                "Cmd": ["run"],
            },
        }
    )
    assert image.repo_tags == ("app:latest",) and image.repo_digests == ("app@" + B,)
    assert image.diff_ids == (B, C)
    assert image.platform == "linux/arm64" and image.variant == "v8"
    assert image.labels[cnb.STACK_ID] == "s"
    assert image.config.env_map() == {"PATH": "/bin", "CNB_USER_ID": "1000"}
    assert image.config.env_value("CNB_USER_ID") == "1000"
    assert image.config.env_value("EMPTY") == ""
    assert (image.config.user, image.config.working_dir, image.config.cmd) == (
        "cnb",
        "/workspace",
        ("run",),
    )


def _labels(document: object) -> dict[str, str]:
    return {cnb.LIFECYCLE_METADATA: json.dumps(document)}


def test_lifecycle_metadata_run_image_and_its_older_form() -> None:
    new = cnb.LifecycleMetadata.from_labels(
        "app",
        _labels({"runImage": {"image": "run:1", "mirrors": ["m/run:1"], "topLayer": B}}),
    )
    assert new.run_image == cnb.RunImageReference("run:1", ("m/run:1",))
    assert new.top_layer == B
    old = cnb.LifecycleMetadata.from_labels(
        "app", _labels({"stack": {"runImage": {"image": "run", "mirrors": None}}})
    )
    assert old.run_image == cnb.RunImageReference("run", ())
    assert old.top_layer is None


def test_a_run_image_matches_its_mirrors_under_any_tag() -> None:
    reference = cnb.RunImageReference("example.com/run:1", ("docker.io/library/run",))
    assert reference.matches("example.com/run:2")
    assert reference.matches("run@" + A)
    assert not reference.matches("other/run")


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        ({}, "is not a CNB image"),
        ({cnb.LIFECYCLE_METADATA: "{"}, "not valid JSON"),
        ({cnb.LIFECYCLE_METADATA: '{"runImage": []}'}, "malformed"),
    ],
)
def test_a_bad_metadata_label_is_one_clear_error(labels: dict[str, str], needle: str) -> None:
    with pytest.raises(cnb.MetadataError, match=needle):
        cnb.LifecycleMetadata.from_labels("app", labels)


def test_rebased_metadata_keeps_what_it_does_not_change() -> None:
    metadata = cnb.LifecycleMetadata(
        {"app": [{"sha": "x"}], "runImage": {"image": "run", "topLayer": A}}
    )
    same = json.loads(metadata.rebased(B, "1234"))
    assert same == {
        "app": [{"sha": "x"}],
        "runImage": {"image": "run", "topLayer": B, "reference": "1234"},
    }
    renamed = json.loads(metadata.rebased(B, "1234", renamed_to="other"))
    assert renamed["runImage"]["image"] == "other" and renamed["runImage"]["mirrors"] == []
    assert renamed["stack"] == {"runImage": {"image": "other", "mirrors": []}}
    assert metadata.document["runImage"]["topLayer"] == A  # the original is untouched


def test_stack_mixins_drop_stage_prefixes() -> None:
    labels = {cnb.STACK_MIXINS: '["run:a", "build:b", "c"]'}
    assert cnb.stack_mixins(labels, "img") == {"a", "b", "c"}
    with pytest.raises(cnb.MetadataError):
        cnb.stack_mixins({cnb.STACK_MIXINS: "["}, "img")


def test_manifest_and_index_are_compact_oci_documents() -> None:
    config = b'{"rootfs":{"type":"layers","diff_ids":["' + A.encode() + b'"]}}'
    assert config_diff_ids(config) == [A]
    layer = Descriptor(LAYER_MEDIA_TYPES["gzip"], B, 10)
    manifest = image_manifest(config, [layer])
    assert b" " not in manifest
    document = json.loads(manifest)
    assert document["mediaType"] == OCI_MANIFEST
    assert document["config"] == {
        "mediaType": OCI_CONFIG,
        "digest": digest_of(config),
        "size": len(config),
    }
    assert document["layers"] == [layer.to_json()]
    index = json.loads(image_index([Descriptor(OCI_MANIFEST, digest_of(manifest), 5)]))
    assert index["manifests"][0]["digest"] == digest_of(manifest)
