import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    cmds = _commands(setup)
    assert len(cmds) == 2, "the README's set-up section gives exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci.splitlines()
    for c in cmds:  # a CPU machine must never pull the multi-GB CUDA build
        assert c.startswith("pip install torch==2.13.0 && ")
