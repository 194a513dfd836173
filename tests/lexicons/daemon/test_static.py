"""Static files: request paths map to files inside the directory, and only there."""
import os

from lexicons.daemon.static import StaticFiles, content_type


def make_site(tmp_path):
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    (site / "index.html").write_text("<h1>home</h1>")
    (site / "app.js").write_text("export {}")
    (site / "sub" / "index.html").write_text("sub")
    (site / ".secret").write_text("no")
    (tmp_path / "outside.txt").write_text("no")
    os.symlink(tmp_path / "outside.txt", site / "link.txt")
    return site


def test_root_and_directories_serve_their_index(tmp_path):
    """'/' and a directory path find index.html."""
    files = StaticFiles(str(make_site(tmp_path)))
    assert files.find("/").path.endswith("site/index.html")
    assert files.find("/sub/").path.endswith("sub/index.html")
    assert files.find("/app.js").size == len("export {}")


def test_nothing_outside_the_directory_or_hidden_is_found(tmp_path):
    """Parent paths, symbolic links out, hidden files and missing files find nothing."""
    files = StaticFiles(str(make_site(tmp_path)))
    for path in ("/../outside.txt", "/sub/../../outside.txt", "/link.txt", "/.secret",
                 "/missing.css", "/app.js\0", "/..\\outside.txt"):
        assert files.find(path) is None, path


def test_etag_changes_with_the_file(tmp_path):
    """The ETag follows the file's modification time and size."""
    site = make_site(tmp_path)
    files = StaticFiles(str(site))
    before = files.find("/app.js").etag
    (site / "app.js").write_text("export const x = 1")
    assert files.find("/app.js").etag != before


def test_content_types_are_what_browsers_need():
    """Scripts are text/javascript (module scripts need it); text is UTF-8."""
    assert content_type("a/chat.js") == "text/javascript; charset=utf-8"
    assert content_type("index.HTML") == "text/html; charset=utf-8"
    assert content_type("x.css") == "text/css; charset=utf-8"
    assert content_type("logo.png") == "image/png"
    assert content_type("blob.unknownext") == "application/octet-stream"
