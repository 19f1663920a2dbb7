"""`siso.app.settings`: where the app writes by default."""

from pathlib import Path

from siso.app.studio import AppSettings


def test_the_default_root_is_the_users_data_folder(monkeypatch, tmp_path):
    from siso.app.settings import default_root

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert AppSettings().root == default_root() == tmp_path / "siso" / "app"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_root() == Path.home() / ".local" / "share" / "siso" / "app"
