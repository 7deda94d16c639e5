"""Settings from the environment: defaults, parsing, and one clear line for a bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from oilspill.config import ConfigError, Settings, from_env, settings_table


def test_defaults_without_environment():
    s = from_env({})
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8000, Path("./data"))
    assert s.ml_service_url == "http://localhost:8002" and s.bundled_ml_stub
    assert (s.concurrency, s.max_upload_bytes, s.ml_timeout_s) == (4, 1024**3, 60.0)


def test_values_are_parsed_with_units():
    s = from_env({"OILSPILL_PORT": "9000", "OILSPILL_MAX_UPLOAD_BYTES": "512M",
                  "ML_SERVICE_URL": "http://ml:8002/", "OILSPILL_ML_TIMEOUT_S": "2.5",
                  "OILSPILL_DATA_DIR": "/srv/oil", "OILSPILL_LOG_LEVEL": "debug"})
    assert (s.port, s.max_upload_bytes, s.ml_timeout_s) == (9000, 512 * 1024**2, 2.5)
    assert s.ml_service_url == "http://ml:8002" and not s.bundled_ml_stub
    assert (s.data_dir, s.log_level) == (Path("/srv/oil"), "DEBUG")


@pytest.mark.parametrize(("env", "named"), [
    ({"OILSPILL_PORT": "eighty"}, "OILSPILL_PORT"),
    ({"OILSPILL_PORT": "70000"}, "OILSPILL_PORT"),
    ({"OILSPILL_CONCURRENCY": "0"}, "OILSPILL_CONCURRENCY"),
    ({"OILSPILL_MAX_UPLOAD_BYTES": "-1"}, "OILSPILL_MAX_UPLOAD_BYTES"),
    ({"OILSPILL_ML_TIMEOUT_S": "soon"}, "OILSPILL_ML_TIMEOUT_S"),
    ({"ML_SERVICE_URL": "ml:8002"}, "ML_SERVICE_URL"),
    ({"OILSPILL_LOG_LEVEL": "LOUD"}, "OILSPILL_LOG_LEVEL"),
    ({"OILSPILL_CONCURENCY": "4"}, "OILSPILL_CONCURENCY"),  # a typo is not ignored
])
def test_a_bad_value_names_its_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        from_env(env)


def test_settings_are_frozen():
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_readme_lists_every_setting():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for row in settings_table().splitlines()[2:]:
        assert row in readme, f"README is missing or out of date for: {row}"
