"""The reference model's real int8 OpenVINO engine: registered to S3 (multipart), fetched verified."""

from __future__ import annotations

import math

import pytest

from builders.manifest import read_manifest
from registry.client import CANDIDATE, PRODUCTION
from registry.names import registered_name


@pytest.mark.slow
def test_register_and_fetch_the_reference_engine(ov_int8_engine, s3, registry_factory):
    manifest = read_manifest(ov_int8_engine)
    reg = registry_factory(s3.root)
    version = reg.register(ov_int8_engine, gate_passed=True, metrics={"word_perplexity": 61.9})
    name = registered_name(manifest.source.repo, manifest.name)  # huggingfacetb--smollm2-135m-instruct
    assert reg.aliases(name) == {CANDIDATE: version}
    tags = reg.client.get_model_version(name, version).tags
    assert tags["hf_repo"] == manifest.source.repo and tags["backend"] == "openvino"
    assert tags["quantization"] == "int8" and tags["build_id"] == manifest.build_id

    # the 135 MB weights went up as a multipart upload: ETag "<md5>-<parts>", 8 MiB parts
    objects = s3.objects()
    key = next(k for k in objects if k.endswith("/engine/openvino_model.bin"))
    size = manifest.files["openvino_model.bin"].size
    assert objects[key]["Size"] == size
    parts = int(objects[key]["ETag"].strip('"').rsplit("-", 1)[1])
    assert parts == math.ceil(size / (8 * 1024 * 1024))

    reg.promote(name, version)
    path = reg.fetch(name, PRODUCTION)
    fetched = read_manifest(path)
    assert fetched.build_id == manifest.build_id and fetched.files == manifest.files

    import openvino as ov

    model = ov.Core().read_model(path / "openvino_model.xml")
    assert any("input_ids" in port.get_names() for port in model.inputs)
