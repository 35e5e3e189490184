"""FeatureSpec: what features depend on, recorded verbatim and compared by one method."""

import json
import pickle

import numpy as np
import pytest

from captioner.feature_spec import MODEL_KEYS, FeatureSpec

CLASSES = [f"class {i}" for i in range(400)]  # a concept head's class list: a large value


def _record(**changes):
    record = {"backbone": "efficientnet_lite2_concepts+i3d_concepts", "weights_sha256": "ab12",
              "feature_dim": 1408 + 1000 + 400, "input_size": 260, "mean": (0.0, 0.0, 0.0), "std": [1.0] * 3,
              "clip_len": 16, "members": [{"backbone": "i3d_concepts", "concepts": {"classes": CLASSES}}],
              "runtime": "openvino", "precision": "fp32", "frames": "uniform:4"}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


class _Extractor:
    def __init__(self, record):
        self.record = record

    def provenance(self):
        return dict(self.record)


def test_a_spec_is_its_record_as_json_has_it_and_reads_back_equal():
    spec = FeatureSpec(_record(feature_dim=np.int64(2808)))
    assert spec.to_dict() == json.loads(json.dumps(spec.to_dict()))  # numpy and tuples made JSON
    assert spec["mean"] == [0.0, 0.0, 0.0] and spec.feature_dim == 2808
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(FeatureSpec(spec.to_dict())) == hash(spec)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert FeatureSpec.from_dict(None) is None and FeatureSpec.from_dict(spec) is spec
    assert dict(spec) == spec.to_dict() and spec == spec.to_dict()  # a read-only mapping of the record
    with pytest.raises(AttributeError):
        spec.backbone = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec["frames"] = "uniform:16"  # type: ignore[index]


def test_of_adds_the_sampling_and_mirroring_to_what_the_extractor_records():
    spec = FeatureSpec.of(_Extractor(_record(frames=None)), "uniform:16", mirror=True)
    assert (spec.frames, spec.mirror, spec.backbone) == ("uniform:16", True, _record()["backbone"])
    assert "mirror" not in FeatureSpec.of(_Extractor(_record()), "uniform:4")


def test_a_store_compares_every_key_but_where_features_ran():
    spec = FeatureSpec(_record())
    assert spec.differences(_record(runtime="torch")) == []
    assert spec.differences({**_record(), "runtimes": ["openvino", "torch"]}) == []
    assert spec.differences(_record(precision="bf16", frames="uniform:16")) == ["frames", "precision"]
    assert spec.differences(_record(mirror=True)) == ["mirror"]  # recorded by one only: differs
    other_classes = _record(members=[{"backbone": "i3d_concepts", "concepts": {"classes": CLASSES[::-1]}}])
    assert spec.differences(other_classes) == ["members"]


def test_a_store_entry_records_large_values_by_digest_and_still_compares_with_the_full_record():
    spec = FeatureSpec(_record())
    compact = spec.compact()
    assert set(compact["members"]) == {"sha256"} and compact["frames"] == "uniform:4"
    assert len(json.dumps(compact)) < 1000 < len(json.dumps(spec.to_dict()))
    assert FeatureSpec(compact).differences(spec) == []
    assert FeatureSpec(compact).differences(_record(members=[])) == ["members"]


def test_a_checkpoint_compares_backbone_weights_and_size_where_both_record_them():
    trained_on = FeatureSpec(_record())
    assert trained_on.differences(_record(frames="uniform:16", precision="bf16"), MODEL_KEYS) == []
    assert trained_on.differences(_record(weights_sha256="cd34"), MODEL_KEYS) == ["weights_sha256"]
    older = {"backbone": trained_on.backbone}  # files of earlier versions recorded less
    assert trained_on.differences(older, MODEL_KEYS) == []
    assert trained_on.differences({"backbone": "efficientnet_lite0"}, MODEL_KEYS) == ["backbone"]


def test_a_pipeline_keys_extraction_as_it_always_has():
    # Stage keys of stores made before precisions were recorded must stay what they were.
    assert FeatureSpec.asked("efficientnet_lite2", "uniform:16", "auto").pipeline_key() == \
        {"backbone": "efficientnet_lite2", "frames": "uniform:16"}
    assert FeatureSpec.asked("efficientnet_lite2", "uniform:16", "fp32").pipeline_key() == \
        {"backbone": "efficientnet_lite2", "frames": "uniform:16"}
    assert FeatureSpec.asked("i3d", "uniform:4", "int8").pipeline_key()["precision"] == "int8"
