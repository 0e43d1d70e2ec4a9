"""The README's Python example runs as written (on the bundled demo catalog)."""

import re
from importlib import resources
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    demo = str(resources.files("recsieve") / "data" / "demo_items.jsonl")
    code = code.replace('"items.jsonl"', repr(demo))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own README, in a test
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 10 and all(line.split()[0].isdigit() for line in lines)
    assert (tmp_path / "shop-engine" / "MANIFEST.json").is_file()
