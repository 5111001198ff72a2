"""packcache.jsondoc: what it reads as JSON, and which config shapes it lets through."""

from __future__ import annotations

import json

import pytest

from packcache.errors import PackcacheError
from packcache.jsondoc import (
    DocumentError,
    check_descriptor,
    check_image_config,
    config_diff_ids,
    strict_loads,
)

DIFF_ID = "sha256:" + "ab" * 32


def test_clean_json_reads_as_json_does() -> None:
    document = {"é": "日本", "emoji": "\U0001f600", "n": [1, 2.5, None, True], "nested": {}}
    text = json.dumps(document, ensure_ascii=True).encode()  # astral chars as surrogate pairs
    assert strict_loads(text, "doc") == document
    assert strict_loads(json.dumps(document, ensure_ascii=False).encode(), "doc") == document


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xef\xbb\xbf{}", "byte-order mark"),
        (b"\xff\xfe{\x00}\x00", "byte-order mark"),
        ("{}".encode("utf-16-be"), "NUL bytes"),
        (b'{"a": "\xc3"}', "not UTF-8"),
        (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udc00": 1}', "lone UTF-16 surrogate"),
        (b'["\\ude00\\ud83d"]', "lone UTF-16 surrogate"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "-Infinity"),
        (b'{"a": 1, "b": {"c": 1, "c": 2}}', "'c' twice"),
        (b"[" * 50_000 + b"]" * 50_000, "not valid JSON"),
        (b"1" * 5000, "not valid JSON"),
        (b"{", "not valid JSON"),
    ],
)
def test_what_strict_loads_refuses(data: bytes, message: str) -> None:
    with pytest.raises(DocumentError, match=r"^the doc") as caught:
        strict_loads(data, "the doc")
    assert message in str(caught.value)
    assert isinstance(caught.value, PackcacheError)  # the CLI prints it as one line


def test_configs_as_engines_write_them_pass() -> None:
    """Go writes nil maps and slices as null: those are empty, not wrong."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": None,
            "Labels": None,
            "ExposedPorts": {"80/tcp": {}},
            "User": "cnb",
        },
        "container_config": {"Hostname": "x"},
        "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]},
        "history": [{"created": "2024-01-01T00:00:00Z", "empty_layer": True}],
        "unknown": {"kept": [1, 2]},
    }
    assert check_image_config(config) is config
    assert config_diff_ids(config) == [DIFF_ID]
    assert config_diff_ids(check_image_config({"rootfs": {"diff_ids": None}})) == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "'rootfs' is not an object"),
        ({"rootfs": {"diff_ids": [DIFF_ID.upper()]}}, "'rootfs.diff_ids'"),
        ({"rootfs": {"type": 1}}, "'rootfs.type'"),
        ({"rootfs": {}, "os.features": "x"}, "'os.features'"),
        ({"rootfs": {}, "config": {"WorkingDir": ["/"]}}, "'config.WorkingDir'"),
        ({"rootfs": {}, "config": {"Volumes": ["/v"]}}, "'config.Volumes'"),
        ({"rootfs": {}, "history": [{"empty_layer": "yes"}]}, "'history[].empty_layer'"),
        ({"rootfs": {}, "history": [{"created_by": 7}]}, "'history[].created_by'"),
    ],
)
def test_what_check_image_config_refuses(config: dict, message: str) -> None:
    with pytest.raises(DocumentError, match=r"^the image config is malformed") as caught:
        check_image_config(config)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "descriptor",
    [
        {"digest": DIFF_ID, "size": True},
        {"digest": DIFF_ID, "size": 1.5},
        {"digest": "sha512:" + "a" * 128},
        {"digest": DIFF_ID, "urls": "http://x"},
        {"digest": DIFF_ID, "platform": "linux/amd64"},
        [DIFF_ID],
    ],
)
def test_what_check_descriptor_refuses(descriptor: object) -> None:
    with pytest.raises(DocumentError):
        check_descriptor(descriptor, "the manifest")
