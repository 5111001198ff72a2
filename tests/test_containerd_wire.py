"""containerd_wire against the protobuf runtime: what it writes parses as the classes generated
from containerd_api/*.proto, and what those classes write it reads back. The transport's use of
each message is tested against real containerd 1.7 and 2.x (test_containerd_transport.py,
test_containerd_load.py)."""

from __future__ import annotations

import pytest

from packcache.transports import containerd_wire as wire
from packcache.transports.containerd_api import (
    content_pb2,
    descriptor_pb2,
    images_pb2,
    leases_pb2,
    namespaces_pb2,
)

DIGEST = "sha256:" + "ab" * 32


def test_a_write_request_parses_as_containerds() -> None:
    labels = {"containerd.io/uncompressed": DIGEST, "b": "ü"}
    ours = (
        wire.integer(1, 2)
        + wire.text(2, "ref-1")
        + wire.integer(3, 5 << 30)
        + wire.text(4, DIGEST)
        + wire.integer(5, 300)
        + wire.data(6, b"\x00" * 200)
        + wire.string_map(7, labels)
    )
    parsed = content_pb2.WriteContentRequest.FromString(ours)
    assert parsed.action == content_pb2.COMMIT
    assert (parsed.ref, parsed.total, parsed.expected, parsed.offset) == (
        "ref-1",
        5 << 30,
        DIGEST,
        300,
    )
    assert parsed.data == b"\x00" * 200
    assert dict(parsed.labels) == labels


def test_an_image_with_its_target_parses_as_containerds() -> None:
    descriptor = (
        wire.text(1, "application/vnd.oci.image.manifest.v1+json")
        + wire.text(2, DIGEST)
        + wire.integer(3, 1234)
        + wire.string_map(5, {"org.opencontainers.image.ref.name": "1"})
    )
    image = wire.text(1, "docker.io/library/app:1") + wire.string_map(2, {"l": "v"})
    request = wire.data(1, image + wire.data(3, descriptor))
    mask = wire.data(2, wire.texts(1, ["target", "labels"]))
    parsed = images_pb2.UpdateImageRequest.FromString(request + mask)
    assert parsed.image.name == "docker.io/library/app:1"
    assert dict(parsed.image.labels) == {"l": "v"}
    assert parsed.image.target == descriptor_pb2.Descriptor(
        media_type="application/vnd.oci.image.manifest.v1+json",
        digest=DIGEST,
        size=1234,
        annotations={"org.opencontainers.image.ref.name": "1"},
    )
    assert list(parsed.update_mask.paths) == ["target", "labels"]
    deleting = images_pb2.DeleteImageRequest.FromString(wire.text(1, "x") + wire.integer(2, True))
    assert (deleting.name, deleting.sync) == ("x", True)


def test_lease_requests_parse_as_containerds() -> None:
    created = leases_pb2.CreateRequest.FromString(
        wire.text(1, "packcache-1") + wire.string_map(3, {"containerd.io/gc.expire": "t"})
    )
    assert (created.id, dict(created.labels)) == ("packcache-1", {"containerd.io/gc.expire": "t"})
    added = leases_pb2.AddResourceRequest.FromString(
        wire.text(1, "packcache-1") + wire.data(2, wire.text(1, DIGEST) + wire.text(2, "content"))
    )
    assert (added.id, added.resource.id, added.resource.type) == ("packcache-1", DIGEST, "content")


def test_containerds_answers_read_back() -> None:
    info = content_pb2.InfoResponse(
        info=content_pb2.Info(digest=DIGEST, size=(1 << 40) + 7, labels={"a": "1", "b": "2"})
    )
    info.info.created_at.GetCurrentTime()  # fields packcache skips are read past
    fields = wire.get_message(wire.decode(info.SerializeToString()), 1)
    assert (wire.get_text(fields, 1), wire.get_int(fields, 2)) == (DIGEST, (1 << 40) + 7)
    assert wire.get_map(fields, 5) == {"a": "1", "b": "2"}

    image = images_pb2.GetImageResponse(
        image=images_pb2.Image(
            name="docker.io/library/app:1",
            labels={"k": "v"},
            target=descriptor_pb2.Descriptor(media_type="m", digest=DIGEST, size=9),
        )
    )
    got = wire.get_message(wire.decode(image.SerializeToString()), 1)
    target = wire.get_message(got, 3)
    assert wire.get_text(got, 1) == "docker.io/library/app:1"
    assert wire.get_map(got, 2) == {"k": "v"}
    assert (wire.get_text(target, 1), wire.get_text(target, 2), wire.get_int(target, 3)) == (
        "m",
        DIGEST,
        9,
    )
    assert wire.get_map(target, 5) == {}

    listed = namespaces_pb2.ListNamespacesResponse(
        namespaces=[namespaces_pb2.Namespace(name="moby"), namespaces_pb2.Namespace(name="x")]
    )
    names = wire.get_messages(wire.decode(listed.SerializeToString()), 1)
    assert [wire.get_text(n, 1) for n in names] == ["moby", "x"]
    statuses = content_pb2.ListStatusesResponse(statuses=[content_pb2.Status(ref="r", total=-1)])
    status = wire.get_messages(wire.decode(statuses.SerializeToString()), 1)[0]
    assert (wire.get_text(status, 3), wire.get_int(status, 5)) == ("r", -1)
    read = content_pb2.ReadContentResponse(offset=3, data=b"abc")
    assert wire.get_bytes(wire.decode(read.SerializeToString()), 2) == b"abc"


def test_defaults_are_left_out_as_protobuf_leaves_them() -> None:
    assert wire.integer(3, 0) == b"" and wire.text(1, "") == b""
    request = content_pb2.ReadContentRequest(digest=DIGEST, offset=0, size=10)
    assert wire.text(1, DIGEST) + wire.integer(3, 10) == request.SerializeToString()


@pytest.mark.parametrize(
    "malformed",
    [
        b"\x08",  # a varint cut short
        b"\x08" + b"\xff" * 11,  # a varint longer than 64 bits
        b"\x0a\x05abc",  # a string longer than what is left
        b"\x0b",  # wire type 3 (a group), which proto3 never sends
        b"\x0d\x00",  # a fixed32 cut short
    ],
)
def test_malformed_messages_are_refused(malformed: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(malformed)


def test_a_field_of_the_wrong_kind_is_refused() -> None:
    fields = wire.decode(wire.integer(1, 5) + wire.text(2, "x"))
    with pytest.raises(wire.WireError):
        wire.get_text(fields, 1)
    with pytest.raises(wire.WireError):
        wire.get_int(fields, 2)
    with pytest.raises(wire.WireError):
        wire.get_text(wire.decode(wire.data(1, b"\xff\xfe")), 1)
