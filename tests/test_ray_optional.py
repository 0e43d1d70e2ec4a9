"""Ray is optional: the default install never imports it, and the Ray path says what to install
when it is missing, or which address does not answer. Fast (no Ray instance is started)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import pytest
from test_config import WordHashEmbedder

from recsieve.errors import ClusterUnavailableError, InvalidInputError

DEMO = str(resources.files("recsieve") / "data" / "demo_items.jsonl")


def run_python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_default_install_never_imports_ray():
    got = run_python(
        "import json, sys\n"
        "import recsieve, recsieve.cli, recsieve.distributed, recsieve.distributed.build\n"
        "from recsieve import Engine, EngineConfig\n"
        "recsieve.cli.build_parser()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))))\n"
    )
    assert got == []


def test_without_ray_the_ray_path_names_the_extra(tmp_path):
    out = tmp_path / "eng"
    got = run_python(
        "import contextlib, io, json, sys\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from recsieve.distributed import build_index\n"
        "from recsieve.errors import MissingDependencyError\n"
        "from recsieve.cli import main\n"
        "try:\n"
        f"    build_index({DEMO!r}, {str(out)!r})\n"
        "    error = None\n"
        "except MissingDependencyError as exc:\n"
        "    error = str(exc)\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        f"    code = main(['build-index', {DEMO!r}, '--out', {str(out)!r}, '--ray'])\n"
        "print(json.dumps({'error': error, 'code': code, 'stderr': err.getvalue()}))\n"
    )
    assert got["error"] is not None and "pip install 'recsieve[ray]'" in got["error"]
    assert got["code"] == 2
    assert got["stderr"].startswith("recsieve build-index: error:") and "recsieve[ray]" in got["stderr"]
    assert got["stderr"].count("\n") == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_address_where_nothing_listens_fails_at_once(tmp_path, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("lance")
    from recsieve.cli import main
    from recsieve.distributed import build_index

    out = tmp_path / "eng"
    with pytest.raises(ClusterUnavailableError, match=r"address='127\.0\.0\.1:1': no Ray cluster answers there"):
        build_index(DEMO, out, address="127.0.0.1:1")
    assert main(["build-index", DEMO, "--out", str(out), "--ray", "ray://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsieve build-index: error: address='ray://127.0.0.1:1'") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing left: neither the directory nor a half-built one


@pytest.mark.parametrize("address", ["nonsense", "host:", ":6379", "host:99999", "ray://"])
def test_a_malformed_address_names_itself(address):
    pytest.importorskip("ray")
    from recsieve.distributed import connect

    with pytest.raises(InvalidInputError, match="^address="):
        connect(address)


def test_num_cpus_is_for_a_local_ray_only():
    pytest.importorskip("ray")
    from recsieve.distributed import connect

    with pytest.raises(InvalidInputError, match="^num_cpus=2"):
        connect("127.0.0.1:6379", num_cpus=2)


@pytest.mark.parametrize("kwargs, field", [
    ({"actors": 0}, "actors"), ({"batch_size": 0}, "batch_size"), ({"cpus_per_actor": 0}, "cpus_per_actor"),
    ({"gpus_per_actor": -1}, "gpus_per_actor"), ({"embedder": object()}, "embedder"),
])
def test_bad_options_are_refused_before_ray_starts(tmp_path, kwargs, field):
    pytest.importorskip("ray")
    pytest.importorskip("lance")
    from recsieve.distributed import build_index

    with pytest.raises(InvalidInputError, match=f"^{field}="):
        build_index(DEMO, tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_paths_are_refused_as_the_local_build_refuses_them(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("lance")
    from recsieve.distributed import build_index
    from recsieve.engine.engine import build_index as local_build_index
    from recsieve.errors import StoreError

    for path in (tmp_path / "missing.jsonl", tmp_path / "items.txt"):
        with pytest.raises(InvalidInputError) as local:
            local_build_index(path, tmp_path / "local", embedder=WordHashEmbedder())
        with pytest.raises(InvalidInputError) as ours:
            build_index(path, tmp_path / "out")
        assert str(ours.value) == str(local.value)
    (tmp_path / "shards").mkdir()
    with pytest.raises(InvalidInputError, match="a folder without item files"):
        build_index(tmp_path / "shards", tmp_path / "out")
    (tmp_path / "shards" / "notes.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="not an item file") as caught:
        build_index(tmp_path / "shards", tmp_path / "out")
    assert caught.value.value == str(tmp_path / "shards" / "notes.txt")
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(StoreError, match="exists and is not empty"):
        build_index(DEMO, tmp_path / "taken")
    assert not (tmp_path / "out").exists()


def test_a_local_ray_that_does_not_start_is_a_clear_error(monkeypatch):
    """Ray raises a bare ``Exception`` when its node does not register within 30 s (seen on a
    busy machine); that is reported as the cluster being unavailable, and what started is stopped."""
    ray = pytest.importorskip("ray")
    from recsieve.distributed import connect

    def init(**kwargs):
        raise Exception("The current node timed out during startup.")

    stopped = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: stopped.append(True))
    with pytest.raises(ClusterUnavailableError, match="a local Ray instance did not start .*timed out during startup"):
        connect()
    assert stopped == [True]
