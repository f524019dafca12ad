"""The run folder's owner (featureforge.run): typed config.json, format version, folder policy."""

from __future__ import annotations

import json

import pytest

from featureforge.errors import FeatureforgeError
from featureforge.run import RUN_FORMAT_VERSION, RunConfig, RunFormatError, prepare_out_dir


def test_config_round_trips_and_keeps_unknown_keys(tmp_path):
    cfg = RunConfig(trainer="topk", d_in=8, d_dict=32, options={"k": 4}, holdout={"chunks": [3], "rows": 10})
    cfg.extra["from_a_plugin"] = {"x": 1}
    cfg.write(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["format_version"] == RUN_FORMAT_VERSION and data["status"] == "training"
    assert "training_result" not in data, "unset fields are left out, as before"
    back = RunConfig.read(tmp_path)
    assert back == cfg and back.extra == {"from_a_plugin": {"x": 1}}
    assert not back.complete and back.replace(status="complete").complete


def test_newer_format_is_refused_with_upgrade(tmp_path):
    RunConfig(trainer="topk", d_in=8, d_dict=32).write(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["format_version"] = RUN_FORMAT_VERSION + 98
    path.write_text(json.dumps(data))
    with pytest.raises(RunFormatError, match="upgrade featureforge"):
        RunConfig.read(tmp_path)


@pytest.mark.parametrize("text,match", [("{", "not valid JSON"), ("[]", "not a JSON object"), ('{"trainer": "x"}', "has no 'd_in'")])
def test_damaged_config_is_one_line(tmp_path, text, match):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(FeatureforgeError, match=match):
        RunConfig.read(tmp_path)


def test_existing_folder_policy(tmp_path):
    prepare_out_dir(tmp_path / "new")  # absent: fine
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "thesis.txt").write_text("mine")
    with pytest.raises(FeatureforgeError, match="already exists"):
        prepare_out_dir(other)
    with pytest.raises(FeatureforgeError, match="not a featureforge run"):
        prepare_out_dir(other, overwrite=True)
    assert (other / "thesis.txt").read_text() == "mine"
    run = tmp_path / "run"
    RunConfig(trainer="topk", d_in=8, d_dict=32).write(run)
    with pytest.raises(FeatureforgeError, match="pass --overwrite to replace it"):
        prepare_out_dir(run, resumable=False)
    prepare_out_dir(run, overwrite=True)
    assert not run.exists()


