"""Version discovery and model config, as pure logic on real folders (serving/discovery.py)."""

from __future__ import annotations

import pytest

from odal.serving import discovery
from odal.serving.errors import ServingError


def _base(tmp_path, *names):
    for name in names:
        (tmp_path / name).mkdir()
    return tmp_path


def test_only_integer_named_children_are_versions(tmp_path):
    base = _base(tmp_path, "1", "2", "10", ".staging-3", "tmp", "3.5", "v4")
    (tmp_path / "7").write_text("a file named like a version is listed too, as TF Serving lists children")
    assert sorted(discovery.list_versions(base)) == [1, 2, 7, 10]


def test_missing_base_path_is_none_not_empty(tmp_path):
    assert discovery.list_versions(tmp_path / "absent") is None


@pytest.mark.parametrize("name, version", [("1", 1), ("0042", 42), (" 5 ", 5), ("-1", -1), ("+3", 3),
                                           ("1e3", None), ("", None), ("9223372036854775808", None)])
def test_version_names_parse_like_tf_serving_safe_strto64(name, version):
    assert discovery.parse_version(name) == version


def test_latest_policy_serves_the_newest_num_versions(tmp_path):
    base = _base(tmp_path, "1", "2", "3")
    assert list(discovery.ModelSource("m", str(base)).aspired()) == [3]
    two = discovery.ModelSource("m", str(base), discovery.VersionPolicy("latest", 2))
    assert sorted(two.aspired()) == [2, 3]


def test_all_and_specific_policies(tmp_path):
    base = _base(tmp_path, "1", "2", "3")
    assert sorted(discovery.ModelSource("m", str(base), discovery.VersionPolicy("all")).aspired()) == [1, 2, 3]
    specific = discovery.VersionPolicy("specific", versions=frozenset({1, 3, 9}))
    assert sorted(discovery.ModelSource("m", str(base), specific).aspired()) == [1, 3]


def test_config_file_policies_and_labels_are_read_with_tf_servings_protos(tmp_path):
    config = discovery.parse_config_text(f"""
        model_config_list {{
          config {{ name: "a" base_path: "{tmp_path}/a" model_platform: "tensorflow"
                   model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
                   version_labels {{ key: "stable" value: 1 }} }}
          config {{ name: "b" base_path: "{tmp_path}/b" model_platform: "tensorflow"
                   model_version_policy {{ all {{}} }} }}
          config {{ name: "c" base_path: "{tmp_path}/c" model_platform: "tensorflow" }}
        }}""")
    a, b, c = discovery.sources(config)
    assert a.policy == discovery.VersionPolicy("specific", versions=frozenset({1, 2}))
    assert dict(a.labels) == {"stable": 1}
    assert b.policy.kind == "all"
    assert c.policy == discovery.VersionPolicy("latest", 1)


@pytest.mark.parametrize("body, message", [
    ('config { name: "a" base_path: "/x" model_platform: "tensorflow" } '
     'config { name: "a" base_path: "/y" model_platform: "tensorflow" }',
     "Illegal to list model a multiple times in config list"),
    ('config { name: "a" base_path: "relative" model_platform: "tensorflow" }',
     "Expected model a to have an absolute path or URI; got base_path()=relative"),
    ('config { name: "a" base_path: "/x" }',
     "Illegal setting neither ModelServerConfig::model_type (deprecated) nor ModelServerConfig::model_platform."),
    ('config { name: "a" base_path: "/x" model_platform: "caffe" }', "Model a requests unsupported platform caffe"),
])
def test_invalid_config_lists_are_rejected_with_tf_servings_messages(body, message):
    with pytest.raises(ServingError) as raised:
        discovery.sources(discovery.parse_config_text("model_config_list { " + body + " }"))
    assert raised.value.code == "INVALID_ARGUMENT" and raised.value.message == message


def test_unparseable_config_text_is_invalid_argument():
    with pytest.raises(ServingError) as raised:
        discovery.parse_config_text("model_config_list { nonsense: 1 }")
    assert raised.value.code == "INVALID_ARGUMENT"


def test_single_model_flags_make_an_absolute_tensorflow_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (source,) = discovery.sources(discovery.single_model_config("det", "models/det"))
    assert source.name == "det" and source.base_path == str(tmp_path / "models" / "det")
