"""Settings are data: every field is documented and the environment can set it."""

from pathlib import Path

from studio.settings import Settings, describe_settings


def test_every_setting_has_a_description():
    rows = describe_settings()
    assert len(rows) == len(Settings.model_fields) > 10
    for name, _default, help_text in rows:
        assert len(help_text) > 15, f"setting {name} needs a description"


def test_environment_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("STUDIO_PORT", "7999")
    settings = Settings()
    assert settings.data_dir == Path(tmp_path) and settings.port == 7999
    assert settings.database_path == Path(tmp_path) / "history.sqlite"


def test_localhost_unless_listen():
    assert Settings().bind_host == "127.0.0.1"
    assert Settings(listen=True).bind_host == "0.0.0.0"


def test_readme_documents_every_setting():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, _default, _help in describe_settings():
        assert f"STUDIO_{name.upper()}" in readme, f"README lacks STUDIO_{name.upper()}"


def test_database_url_names_postgresql_or_nothing(monkeypatch, tmp_path):
    import pytest
    from pydantic import ValidationError

    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path))
    assert Settings().database_url is None and Settings().database == Path(tmp_path) / "history.sqlite"
    monkeypatch.setenv("STUDIO_DATABASE_URL", "")
    assert Settings().database == Path(tmp_path) / "history.sqlite"
    monkeypatch.setenv("STUDIO_DATABASE_URL", "postgresql://u:p@db:5432/studio")
    assert Settings().database == "postgresql+psycopg://u:p@db:5432/studio"  # the installed driver, psycopg 3
    monkeypatch.setenv("STUDIO_DATABASE_URL", "mysql://u:hunter2@db/studio")
    with pytest.raises(ValidationError, match="postgresql\\+psycopg://user:password@host") as raised:
        Settings()
    assert "hunter2" not in str(raised.value).split("input_value")[0]
