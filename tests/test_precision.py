"""The precision rule (captioner.precision) on both kinds of CPU: with bf16 units and without."""

from __future__ import annotations

import pytest

from captioner import precision
from captioner.errors import UsageError


@pytest.fixture(params=[True, False], ids=["bf16-units", "no-bf16-units"])
def bf16(request, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: request.param)
    return request.param


def test_auto_is_mixed_only_where_the_cpu_has_bf16_units(bf16):
    assert precision.resolve("auto", "auto", "cpu") == ("openvino", "mixed" if bf16 else "fp32")
    assert precision.resolve("torch", "auto", "cpu") == ("torch", "fp32")
    assert precision.resolve("auto", "fp32", "cpu") == ("openvino", "fp32")


def test_bf16_is_refused_on_openvino_without_bf16_units_and_names_the_fix(bf16):
    if bf16:
        assert precision.resolve("openvino", "bf16", "cpu") == ("openvino", "bf16")
    else:
        with pytest.raises(UsageError, match="no bf16 units.*use fp32"):
            precision.resolve("openvino", "bf16", "cpu")


@pytest.mark.parametrize("asked", ["mixed", "int8"])
def test_openvino_precisions_are_refused_on_torch(asked):
    with pytest.raises(UsageError, match=f"--precision {asked} is an OpenVINO precision"):
        precision.resolve("torch", asked, "cpu")


@pytest.mark.parametrize("runtime, asked", [("tensorrt", "auto"), ("auto", "fp16")])
def test_unknown_values_are_one_line(runtime, asked):
    with pytest.raises(UsageError, match="unknown --"):
        precision.check(runtime, asked)


def test_each_network_and_the_features_it_makes(bf16):
    assert precision.member_precision("mixed", clip_len=16) == "bf16"
    assert precision.member_precision("mixed", clip_len=1) == "fp32"
    assert precision.member_precision("int8", clip_len=1) == "int8"
    assert precision.member_precision("int8", clip_len=16) == ("bf16" if bf16 else "fp32")  # I3D is never quantized
    assert precision.features_precision("mixed", [1]) == "fp32"  # nothing ran in bf16
    assert precision.features_precision("mixed", [1, 16]) == "mixed"
    assert precision.features_precision("int8", [16]) == ("bf16" if bf16 else "fp32")
    assert precision.features_precision("int8", [1, 16]) == "int8"


def test_captioning_uses_the_precision_of_the_training_features(bf16):
    assert precision.captioning_precision({}, "auto", "cpu") == "fp32"  # stores older than precisions
    assert precision.captioning_precision({"precision": "mixed"}, "auto", "cpu") == ("mixed" if bf16 else "fp32")
    assert precision.captioning_precision({"precision": "bf16"}, "torch", "cpu") == "auto"


def test_pipeline_keys_name_only_the_precisions_that_change_features():
    assert precision.keyed_precision("auto") == precision.keyed_precision("fp32") == {}
    assert precision.keyed_precision("int8") == {"precision": "int8"}


@pytest.mark.parametrize("flags, expected", [({"avx512f", "amx_bf16"}, True), ({"avx512f", "avx512_bf16"}, True),
                                             ({"avx512f", "avx512_vnni"}, False)])
def test_bf16_units_are_read_from_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_info", lambda: {"model": "x", "cores": 2, "flags": frozenset(flags)})
    precision.cpu_has_bf16.cache_clear()
    try:
        assert precision.cpu_has_bf16() is expected
    finally:
        precision.cpu_has_bf16.cache_clear()
