"""The template README's two commands: the demo, and the test command that CI runs.

The demo itself runs as written in test_end_to_end.py, whose checks of the baked README's
quick start go on in the project that the demo bakes.
"""

from __future__ import annotations

from conftest import TEMPLATE, template_readme_commands


def test_readme_gives_the_demo_and_the_test_command_that_ci_runs() -> None:
    demo, tests = template_readme_commands()
    assert demo == "bash .ci/demo"
    ci_lines = [
        line.split("#")[0]
        for line in (TEMPLATE / ".ci" / "run").read_text().splitlines()
    ]
    assert any(tests in line for line in ci_lines), f"`.ci/run` does not call `{tests}`"
