"""`siso.app.sessions`: every session's folder stays under the app's root."""


def test_session_folders_stay_under_the_root(studio):
    for session in ("../../etc", "/abs/path", "", "a b\\c", "x" * 500):
        folder = studio.session_folder(session)
        assert folder.parent == studio.root and folder.name and ".." not in folder.name
