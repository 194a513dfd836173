"""README.md's settings reference is generated from the declarations and cannot drift."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = [sys.executable, str(ROOT / "bin" / "gen-readme-settings")]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GENERATOR, *args], capture_output=True, text=True, timeout=60)


def test_readme_settings_reference_is_up_to_date():
    """The reference in README.md is what bin/gen-readme-settings makes of the declarations."""
    done = run("--check")
    assert done.returncode == 0, done.stderr


def test_generator_rewrites_only_a_stale_reference(tmp_path):
    """A stale reference is detected and rewritten; the text around it is kept."""
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    stale = text.replace("| `PORT` |", "| `PORT_OLD` |")
    assert stale != text
    readme.write_text(stale)
    assert run("--check", "--readme", str(readme)).returncode == 1
    assert run("--readme", str(readme)).returncode == 0
    assert readme.read_text() == text
