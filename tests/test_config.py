"""The config schema rejects what it cannot use, with messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_sample_config_loads() -> None:
    config = load_config(REPO / "configs" / "sample.yaml")
    assert config.prep.inputs, "the sample config names the shipped corpus"
    assert all(Path(p).exists() for p in config.prep.inputs)


def test_overrides_parse_yaml_values() -> None:
    config = load_config(None, ["prep.langid.keep_languages=[en, de]", "prep.langid.min_score=0.3", "prep.workers=3"])
    assert config.prep.langid.keep_languages == ["en", "de"]
    assert config.prep.langid.min_score == pytest.approx(0.3)
    assert config.prep.workers == 3


def test_unknown_key_names_key_and_allowed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("prep:\n  langid:\n    min_scor: 0.2\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "prep.langid.min_scor" in message and "min_score" in message


def test_bad_value_is_explained() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, ["prep.langid.min_score=1.5"])
    assert "prep.langid.min_score" in str(error.value) and "1.5" in str(error.value)


def test_stages_are_put_in_pipeline_order_and_not_repeated() -> None:
    assert load_config(None, ["prep.stages=[pii, langid]"]).prep.stages == ["langid", "pii"]
    with pytest.raises(ConfigError):
        load_config(None, ["prep.stages=[pii, pii]"])
    with pytest.raises(ConfigError) as error:
        load_config(None, ["prep.stages=[pii, dedupe]"])
    assert "prep.stages" in str(error.value)


def test_override_needs_key_and_value() -> None:
    with pytest.raises(ConfigError):
        load_config(None, ["prep.workers"])


def test_config_reference_is_current() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "CONFIG.md").read_text() == module.render(), "run scripts/config_reference.py"


def test_a_lone_value_where_a_list_goes_is_a_list_of_one() -> None:
    config = load_config(None, ["prep.langid.keep_languages=en", "prep.inputs=data/sample"])
    assert config.prep.langid.keep_languages == ["en"] and [str(p) for p in config.prep.inputs] == ["data/sample"]
    assert load_config(None, ["prep.langid.keep_languages=[en, de]"]).prep.langid.keep_languages == ["en", "de"]
    with pytest.raises(ConfigError, match="prep.workers"):
        load_config(None, ["prep.workers=[2]"])
