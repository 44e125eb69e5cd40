"""The committed *_pb2.py / *_pb2_grpc.py / *.pyi are what generate.sh makes from proto/ today."""

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent.parent


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in (root / "whatisup" / "v1").glob("*_pb2*")}


def test_generated_code_is_current(tmp_path):
    subprocess.run(
        [str(HERE / "generate.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    fresh, committed = files(tmp_path), files(HERE / "src")
    assert fresh, "generate.sh produced nothing"
    stale = sorted(str(p) for p in fresh.keys() | committed.keys() if fresh.get(p) != committed.get(p))
    assert not stale, f"run clients/python/generate.sh and commit: {stale}"
