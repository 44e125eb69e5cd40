"""The README's example runs as written against the gateway (key and target from the environment)."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_runs():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, "the README has exactly one runnable ```python block"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], str(README), "exec"), {"__name__": "readme_example"})
    printed = out.getvalue()
    assert re.search(r"^connected as \+\d+$", printed, re.M), printed
    assert re.search(r"^message msg_\w+ (queued|sent)$", printed, re.M), printed
    assert "error code: channel_not_found" in printed, printed
