"""README's set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^(python3 -m venv .*python -m pytest)\s*# run the tests", readme, re.M)
    assert match, "README must give the test command on one line, marked '# run the tests'"
    assert match.group(1).strip() in (ROOT / ".ci" / "run").read_text().splitlines()
