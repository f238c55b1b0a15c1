"""README's set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^(python3 -m venv .*python -m pytest)\s*# run the tests", readme, re.M)
    assert match, "README must give the test command on one line, marked '# run the tests'"
    assert match.group(1).strip() in (ROOT / ".ci" / "run").read_text().splitlines()


def run_snippet(heading: str) -> dict:
    """Execute the first Python block after `heading` in README.md as a user would paste it;
    returns the names it defined."""
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme[readme.index(heading) :], re.S).group(1)
    scope: dict = {}
    exec(compile(code, f"README.md ({heading})", "exec"), scope)
    return scope


def test_the_planners_api_snippet_runs_as_written():
    """The README's planners-API block (real env, real fit)."""
    scope = run_snippet("**2. The planners API**")
    spec = scope["spec"]
    assert scope["action"].shape == (spec.act_dim,) and scope["sequence"].shape == (scope["planner"].config.horizon, spec.act_dim)
    assert scope["stats"]["epochs"] <= 60 and scope["model"].fitted
    assert scope["planner"].config.value_learning and scope["planner"].config.discount == 0.99


def test_the_robot_snippet_runs_as_written():
    """The README's robot block: a real planner in real time on the simulated robot."""
    scope = run_snippet("**On a robot**")
    stats = scope["stats"]
    assert stats["fresh"] + stats["shifted"] + stats["fallback"] == 60 and stats["fresh"] > 0
    assert not scope["controller"].alive  # the block stopped the planning thread
