"""The ``ray`` bench section (``recsieve/bench/on_ray.py``, ``on_ray_serving.py``): its settings
are checked, it says what to install without Ray, and (``slow``: a local Ray with 2 CPUs and Ray
Serve start in the test) a tiny run end to end writes JSON and a plot whose figures hang together.
No timing assertions."""

from __future__ import annotations

import json
import sys

import pytest

from recsieve.bench.common import SyntheticUsers, synthetic_items
from recsieve.bench.on_ray import RaySettings
from recsieve.bench.on_ray_build import two_point_fit
from recsieve.bench.on_ray_serving import MIX, PROBES, request_mix
from recsieve.cli import build_parser
from recsieve.errors import InvalidInputError, MissingDependencyError


@pytest.mark.parametrize("kwargs, field", [
    ({"replicas": (2, 3)}, "replicas"), ({"replicas": (1, 1)}, "replicas"), ({"actors": (0, 2)}, "actors"),
    ({"actors": ("x",)}, "actors"), ({"items": 0}, "items"), ({"clients": True}, "clients"),
    ({"load_seconds": 0}, "load_seconds"), ({"replica_cpus": -1}, "replica_cpus"), ({"embedder": "bert"}, "embedder"),
    ({"journal": "sqlite:///x"}, "journal"), ({"num_cpus": 0}, "num_cpus"), ({"fit_items": 500}, "fit_items"),
    ({"fit_items": -1}, "fit_items"),
])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidInputError, match=f"^{field}="):
        RaySettings(**kwargs)


def test_two_point_fit():
    assert two_point_fit(100, 12.0, 500, 20.0) == {"fixed_s": 10.0, "marginal_items_per_s": 50.0}
    assert two_point_fit(100, 12.0, 500, 11.0) == {"fixed_s": None, "marginal_items_per_s": None}


def test_presets_and_cpus_per_replica():
    quick, full = RaySettings.preset(True), RaySettings.preset(False)
    assert quick.items < full.items and quick.load_seconds < full.load_seconds
    assert RaySettings.preset(True, items=None, replicas=[2, 1]).replicas == (1, 2)  # None keeps the preset
    assert RaySettings(num_cpus=2, replicas=(1, 2)).cpus_per_replica == 1.0
    assert RaySettings(num_cpus=3, replicas=(1, 2, 3)).cpus_per_replica == 1.0
    assert RaySettings(address="auto").cpus_per_replica == 1.0
    assert RaySettings(replica_cpus=0.5).cpus_per_replica == 0.5


def test_the_cli_passes_its_options_as_settings(monkeypatch):
    got = {}
    monkeypatch.setattr("recsieve.bench.run_bench", lambda **kw: got.update(kw))
    args = build_parser().parse_args(["bench", "--quick", "--sections", "ray", "--replicas", "1,3", "--actors", "2",
                                      "--serve-seconds", "2.5", "--ray-embedder", "hash", "--clients", "8"])
    assert args.func(args) == 0
    ray = got["ray"]
    assert (ray.replicas, ray.actors, ray.load_seconds, ray.embedder, ray.clients) == ((1, 3), (2,), 2.5, "hash", 8)
    assert ray.items == RaySettings.preset(True).items
    args = build_parser().parse_args(["bench", "--sections", "ray", "--replicas", "1,two"])
    with pytest.raises(InvalidInputError, match="^replicas='two'"):
        args.func(args)


def test_the_request_mix_is_seeded_and_in_its_shares():
    items = synthetic_items(50, 0)
    import random

    pop = SyntheticUsers(items, 20, random.Random(0))
    mix = request_mix(pop, 2000, seed=3)
    assert mix == request_mix(pop, 2000, seed=3) and mix != request_mix(pop, 2000, seed=4)
    new = sum(b["user_id"].startswith("new-") for b in mix)
    worded = sum("instruction" in b for b in mix)
    known = [b for b in mix if not b["user_id"].startswith("new-")]
    assert all(b["user_id"] in pop.users for b in known)
    assert abs(new / 2000 - MIX["new_user"]) < 0.03 and abs(worded / 2000 - MIX["instruction"]) < 0.03


def test_without_ray_the_section_names_the_extra_before_anything_runs(monkeypatch, tmp_path):
    from recsieve.bench import run_bench

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'recsieve\[ray\]'"):
        run_bench(sections=("ray",), json_out=tmp_path / "r.json", progress=False, summary=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_tiny_run_end_to_end(tmp_path, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("lance")
    pytest.importorskip("matplotlib")
    from recsieve.bench import run_bench

    settings = RaySettings(items=120, fit_items=40, users=30, events_per_user=5, load_seconds=1.0, visibility_samples=6,
                           clients=2, embedder="hash", batch_size=32)
    out = run_bench(quick=True, sections=("ray",), ray=settings, json_out=tmp_path / "ray.json",
                    plots_dir=tmp_path / "plots", progress=False)
    assert json.loads((tmp_path / "ray.json").read_text()) == json.loads(json.dumps(out, default=str))
    assert (tmp_path / "plots" / "ray.png").stat().st_size > 0 and out["plots"] == [str(tmp_path / "plots" / "ray.png")]
    res = out["ray"]
    assert res["cpu_count"] >= 1 and len(res["load_avg"]["start"]) == 3 and len(res["load_avg"]["end"]) == 3
    assert res["ray"]["cluster_cpus"] == 2 and res["catalog"] == {"items": 120, "users": 30, "events": 150}

    build = res["build"]
    base = build["single_process"]["items_per_s"]
    assert len(base) == 1 and base[0] > 0
    assert set(build["actors"]) == {"1", "2"}
    for a, row in build["actors"].items():
        assert row["items_per_s"][0] > 0
        assert row["ratio_vs_single_process"][0] == pytest.approx(row["items_per_s"][0] / base[0])
        assert res["build_items_per_s_ratio_vs_single_process"][a] == row["ratio_vs_single_process_median"]
        phases = build["rounds"][0]["phases_s"][f"actors_{a}"]
        assert all(phases[p] >= 0 for p in ("read", "embed", "assemble"))

    serving = res["serving"]["replicas"]
    assert set(serving) == {"1", "2"}
    for n, row in serving.items():
        lat = row["latency"]
        assert row["requests"] > 0 and row["requests_per_s"] > 0 and row["errors"] == 0 and row["clients"] == 2
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert sum(row["per_replica"]) == row["requests"] and len(row["per_replica"]) <= int(n)
        assert row["qps_ratio_vs_1_replica"] == pytest.approx(row["requests_per_s"] / serving["1"]["requests_per_s"])
        assert res["serving_p99_ratio_vs_1_replica"][n] == pytest.approx(lat["p99_ms"] / serving["1"]["latency"]["p99_ms"])
    assert res["serving_qps_ratio_vs_1_replica"]["1"] == 1.0
    assert sum(res["serving"]["request_mix"][k] for k in MIX) == res["serving"]["request_mix"]["requests"]

    vis = res["visibility"]
    assert vis["replicas"] == 2 and vis["samples"] == 6 and vis["stale_answers"] == 0
    assert set(vis["probes"]) == set(PROBES)
    for row in vis["probes"].values():
        assert row["n"] == 2 and 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["requests_mean"] >= 1

    assert build["warm_up"]["items"] == 20 and set(build["warm_up"]["seconds"]) == {"single_process", "actors_2"}
    assert build["fit_items"] == 40 and set(build["rounds"][0]["seconds"]["actors_2"]) == {"40", "120"}
    seconds = build["rounds"][0]["seconds"]  # one round: its seconds are the medians
    configs = {"single_process": build["single_process"], **{f"actors_{a}": r for a, r in build["actors"].items()}}
    for name, row in configs.items():
        fit = row["fit"]  # the line through both sizes gives back the measured seconds
        if fit["marginal_items_per_s"] is not None:
            for size in (40, 120):
                assert fit["fixed_s"] + size / fit["marginal_items_per_s"] == pytest.approx(seconds[name][str(size)])

    cap = res["capacity"]
    assert cap["qps_per_replica"] == serving["1"]["requests_per_s"]
    assert cap["whole_build_items_per_s"]["actors_1"] == build["actors"]["1"]["items_per_s_median"]
    rate = build["actors"]["1"]["fit"]["marginal_items_per_s"]
    assert cap["marginal_items_per_s_per_actor"] == rate
    assert cap["replica_scaling_2_vs_1"] == pytest.approx(serving["2"]["requests_per_s"] / serving["1"]["requests_per_s"] / 2)
    printed = capsys.readouterr().out
    assert res["summary"] in printed and "1 replica(s)" in printed and "2 actor(s)" in printed
