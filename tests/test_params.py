"""Flow parameters: bad values fail at validation with messages naming the parameter (fast, no server)."""

import json

import pytest
from pydantic import ValidationError

from flows.params import TrainParams, describe_error


def _error(**kwargs) -> str:
    with pytest.raises(ValidationError) as info:
        TrainParams(**kwargs)
    return describe_error(info.value)


def test_defaults_resolve_to_the_demo_preset_on_digits():
    cfg = TrainParams().to_config()
    assert cfg.preset == "demo" and cfg.data.source == "digits" and cfg.model.arch == "transsrgan"
    assert cfg.eval.allow_random_features is True


def test_parameters_map_onto_config_fields(tmp_path):
    (tmp_path / "over.json").write_text(json.dumps({"train": {"lr_g": 0.001}}))
    cfg = TrainParams(preset="tiny", data=str(tmp_path), steps=3, workers=1, spark_master="local[1]",
                      model="dcgan", config_file=str(tmp_path / "over.json"),
                      overrides={"train.n_critic": 2}, allow_random_features=False).to_config()
    assert (cfg.preset, cfg.data.source, cfg.train.steps, cfg.spark.workers) == ("tiny", str(tmp_path), 3, 1)
    assert (cfg.spark.master, cfg.model.arch, cfg.train.lr_g, cfg.train.n_critic) == ("local[1]", "dcgan", 0.001, 2)
    assert cfg.eval.allow_random_features is False


def test_unknown_preset():
    msg = _error(preset="huge")
    assert msg.startswith("preset:") and "'tiny'" in msg and "'huge'" in msg


@pytest.mark.parametrize("steps", [-5, 0])
def test_negative_or_zero_steps(steps):
    msg = _error(steps=steps)
    assert msg.startswith("steps:") and "greater than 0" in msg and str(steps) in msg


def test_missing_data_path(tmp_path):
    missing = tmp_path / "nope"
    msg = _error(data=str(missing))
    assert msg.startswith("data:") and "does not exist" in msg and str(missing) in msg


def test_missing_config_file(tmp_path):
    msg = _error(config_file=str(tmp_path / "c.json"))
    assert msg.startswith("config_file:") and "not found" in msg


def test_bad_override_names_the_config_field():
    assert "train.nope: unknown field" in _error(overrides={"train.nope": 1})
    assert "train.batch_size" in _error(preset="tiny", workers=3)   # 16 images do not split over 3 workers


def test_unknown_parameter_is_rejected():
    assert _error(stpes=3).startswith("stpes:")


def test_flow_signature_validates_the_same_way(tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.train_transsrgan import train_transsrgan

    ok = train_transsrgan.validate_parameters({"preset": "tiny", "steps": 2})
    assert ok["preset"] == "tiny" and ok["steps"] == 2
    for bad, name in (({"preset": "huge"}, "preset"), ({"steps": -1}, "steps"),
                      ({"data": str(tmp_path / "missing")}, "data")):
        with pytest.raises(ParameterTypeError, match=name):
            train_transsrgan.validate_parameters(bad)


def test_deployment_parameter_schema_lists_the_parameters():
    from prefect.utilities.callables import parameter_schema

    from flows.train_transsrgan import train_transsrgan

    schema = parameter_schema(train_transsrgan.fn).model_dump()
    props = schema["properties"]
    assert {"preset", "data", "steps", "workers", "force", "overrides"} <= set(props)
    assert props["preset"]["enum"] == ["tiny", "demo", "thesis32", "full"]
