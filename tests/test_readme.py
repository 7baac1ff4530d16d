"""README examples never rot: the blocks marked ``<!-- readme-test -->`` run, and the quick-start
test command is exactly what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_marked_python_blocks_run():
    blocks = re.findall(r"<!-- readme-test -->\s*```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README lost its tested examples"
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md block {i}", "exec"), {"__name__": "readme"})


def test_ci_runs_the_readme_test_command():
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", README, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in quick.splitlines() if line.strip()]
    assert commands[1] == "make test"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M), ".ci/run must call the README's test command"
    assert "HF_HUB_OFFLINE=1" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert "bash scripts/test.sh" in makefile
    assert "exit 5" in (ROOT / "scripts" / "test.sh").read_text() or "-eq 5" in (ROOT / "scripts" / "test.sh").read_text()
