"""Settings: declarations, files, environment overrides and their errors."""
import os

import pytest

from lexicons.daemon import settings
from lexicons.errors import SettingsError


def test_defaults_are_declared_once_with_doc():
    """Every declared setting has a doc line and its default passes its own kind."""
    for name, setting in settings.DECLARED.items():
        assert setting.doc, name
        setting.kind.check(setting.default)


def test_file_overrides_defaults(tmp_path):
    """A settings file changes only the names it assigns."""
    path = tmp_path / "s.py"
    path.write_text("PORT = 6000\nMY_APP_THING = 'x'\n")
    s = settings.load(str(path), env={}, base_dir=str(tmp_path))
    assert s.PORT == 6000
    assert s.HOST == settings.DECLARED["HOST"].default
    assert s.MY_APP_THING == "x"
    assert s.source == str(path)


def test_environment_overrides_file(tmp_path):
    """LEXICONS_<NAME> wins over the file and is parsed by the setting's kind."""
    path = tmp_path / "s.py"
    path.write_text("PORT = 6000\n")
    env = {"LEXICONS_PORT": "7000", "LEXICONS_TRUST": "127.0.0.1, 10.0.0.0/8",
           "LEXICONS_PERMESSAGE_DEFLATE": "yes", "LEXICONS_FILTERS": '{"message": []}'}
    s = settings.load(str(path), env=env)
    assert s.PORT == 7000
    assert s.TRUST == ["127.0.0.1", "10.0.0.0/8"]
    assert s.PERMESSAGE_DEFLATE is True
    assert s.FILTERS == {"message": []}


@pytest.mark.parametrize("env, words", [
    ({"LEXICONS_PORT": "abc"}, ["LEXICONS_PORT", "integer", "abc"]),
    ({"LEXICONS_PORT": "70000"}, ["LEXICONS_PORT", "65535"]),
    ({"LEXICONS_LOG_LEVEL": "LOUD"}, ["LOG_LEVEL", "one of"]),
    ({"LEXICONS_PROT": "1"}, ["LEXICONS_PROT", "names no setting"]),
    ({"LEXICONS_BACKPLANE": "kafka://x"}, ["BACKPLANE", "redis://"]),
    ({"LEXICONS_DATABASE": "postgres://x"}, ["DATABASE", "journal", "redis://"]),
    ({"LEXICONS_RESTART_BACKOFF": "-1"}, ["RESTART_BACKOFF", ">= 0"]),
])
def test_bad_environment_names_the_setting(env, words):
    """A bad environment value stops loading with a message naming the setting."""
    with pytest.raises(SettingsError) as info:
        settings.load(None, env=env)
    for word in words:
        assert word in str(info.value)


def test_bad_file_value_names_file_and_setting(tmp_path):
    """A wrong type in the settings file names the file, the setting and the value."""
    path = tmp_path / "s.py"
    path.write_text("PORT = '5000'\n")
    with pytest.raises(SettingsError) as info:
        settings.load(str(path), env={})
    assert str(path) in str(info.value) and "PORT" in str(info.value)


def test_bad_service_entry_is_refused(tmp_path):
    """A SERVICE_LIST entry not of the form module/Class is refused by name."""
    with pytest.raises(SettingsError, match="services.control"):
        settings.load(None, env={}, overrides={"SERVICE_LIST": ["services.control"]})


def test_broken_settings_file_is_reported(tmp_path):
    """A settings file that raises is reported with the file and the error."""
    path = tmp_path / "s.py"
    path.write_text("PORT = 1/0\n")
    with pytest.raises(SettingsError, match="ZeroDivisionError"):
        settings.load(str(path), env={})
    with pytest.raises(SettingsError, match="does not exist"):
        settings.load(str(tmp_path / "missing.py"), env={})


def test_relative_paths_resolve_against_base_dir(tmp_path):
    """Relative paths become absolute at load time; '-' for LOG_PATH stays '-'."""
    s = settings.load(None, env={"LEXICONS_LOG_PATH": "-"}, base_dir=str(tmp_path))
    assert s.DATA_DIR == os.path.join(str(tmp_path), "data")
    assert s.LOG_PATH == "-"


def test_settings_are_read_only():
    """Settings cannot be assigned; replace() validates and returns a copy."""
    s = settings.load(None, env={})
    with pytest.raises(AttributeError):
        s.PORT = 1
    t = s.replace(PORT=1234)
    assert (s.PORT, t.PORT) == (5000, 1234)
    with pytest.raises(SettingsError):
        s.replace(PORT="x")


def test_reference_table_lists_every_setting():
    """The generated reference names every declared setting."""
    table = settings.reference_table()
    for name in settings.DECLARED:
        assert f"`{name}`" in table


def test_paths_of_a_settings_file_resolve_against_its_directory(tmp_path, monkeypatch):
    """A file's relative paths and the defaults are relative to the file, wherever one runs."""
    app = tmp_path / "srv" / "app"
    app.mkdir(parents=True)
    (app / "settings.py").write_text("LOCK_FILE = 'run/lexiconsd.pid'\nDATA_DIR = 'data'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = settings.load(str(app / "settings.py"), env={"LEXICONS_LOG_PATH": "x.log"},
                      overrides={"CONTROL_SOCKET": "c.sock"})
    assert s.LOCK_FILE == str(app / "run" / "lexiconsd.pid")
    assert s.DATA_DIR == str(app / "data")
    assert s.LOG_PATH == str(elsewhere / "x.log")          # the environment: where one runs
    assert s.CONTROL_SOCKET == str(elsewhere / "c.sock")   # so are explicit overrides
    relative = settings.load("../srv/app/settings.py", env={})
    assert relative.LOCK_FILE == s.LOCK_FILE
    assert relative.CONTROL_SOCKET == str(app / "lexiconsd.sock")  # a default: by the file
