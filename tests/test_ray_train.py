"""The context encoder trained data-parallel: two gloo workers take the single process's steps
(no Ray: ``torch.multiprocessing``), and ``recsieve train --ray --workers 2`` on a local Ray
instance (``slow``: Ray takes seconds to start) writes the same model folder, learns what the
single process learns, and refuses bad options with clear errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_config import WordHashEmbedder
from test_ray_optional import run_python

from recsieve import Engine, EngineConfig
from recsieve.catalog import read_items
from recsieve.cli import main
from recsieve.context import ContextSettings
from recsieve.errors import InvalidInputError
from recsieve.training import train_engine
from recsieve.training.context_model import TrainConfig, fit_context_model
from recsieve.training.data_parallel import DataParallel
from recsieve.training.fusion import WEIGHT_GRID


def planted(users: int, n_items: int = 20, seed: int = 0) -> list[np.ndarray]:
    """A->B->C and D->B->E behind random fillers: after B, only the item before B tells C from E."""
    rng = np.random.default_rng(seed)
    seqs = []
    for u in range(users):
        fill = rng.integers(5, n_items, size=rng.integers(1, 4))
        pat = [0, 1, 2] if u % 2 == 0 else [3, 1, 4]
        seqs.append(np.array([*fill, *pat], np.int64))
    return seqs


# 201 users, batches of 20: the last batch has one row, so one of two workers gets none
SEQS = planted(201)
CONTEXTS = [s[:-1] for s in SEQS[:30]]
TEXT = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
# every kind of dropout off (the model's and the training's): nothing random but the seeded draws
NO_DROPOUT = {f.name: 0.0 for f in fields(ContextSettings) if "dropout" in f.name}
NO_TRAIN_DROPOUT = {f.name: 0.0 for f in fields(TrainConfig) if "dropout" in f.name}
SETTINGS = ContextSettings(n_warm=20, text_dim=8, dim=16, max_len=8, adapter_hidden=16, **NO_DROPOUT)
CONFIG = TrainConfig(epochs=3, lr=5e-3, batch_size=20, bf16=False, valid_users=40, patience=None, threads=1,
                     **NO_TRAIN_DROPOUT)


def _state(model) -> dict[str, np.ndarray]:
    """The tower's and encoder's weights, without the attention's key bias: it shifts every logit
    of a row alike, so its gradient is rounding noise alone, which Adam turns into steps whose
    sign follows the summation order."""
    state = {f"{part}.{k}": v.detach().numpy().copy()
             for part in ("tower", "encoder") for k, v in getattr(model, part).state_dict().items()}
    for name, value in state.items():
        if name.endswith("qkv.bias"):
            third = value.size // 3
            state[name] = np.concatenate([value[:third], value[2 * third :]])  # query and value
    return state


def _gloo_worker(rank: int, world: int, init: str, out: str, config: TrainConfig) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, history = fit_context_model(SEQS, 20, TEXT, settings=SETTINGS, config=config,
                                           parallel=DataParallel.current())
        torch.save({"state": _state(model), "history": history, "scores": model.score_items(CONTEXTS)},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("batching, plateau", [  # two of three behind slow: suite time
    pytest.param("random", None, marks=pytest.mark.slow), ("bucket", None),
    pytest.param("bucket", 1, marks=pytest.mark.slow)])
def test_two_gloo_workers_train_the_single_process_model(tmp_path, batching, plateau):
    """No dropout, full softmax, fp32: each step of the group is the single process's step over
    the same rows, so after 3 epochs (a worker with an empty share of a batch among them) the
    weights, scores, losses and validation metrics are the single process's, to float rounding
    (with bucketed batches too, whose gradient is scaled by the group's positions; and with a
    learning-rate cut, which every worker makes after the same epoch, from the same best weights)."""
    config = replace(CONFIG, batching=batching)
    if plateau is not None:  # at this rate the held-out score stops rising within a few epochs
        # and, with seen items out of the softmax, this toy's training follows the summation order
        # (one process on 1 and 2 threads: weights 1.5e-4 apart after 6 epochs, 6e-6 with them in)
        config = replace(config, epochs=6, lr=5e-2, plateau=plateau, cut_factor=0.1, cuts=1, exclude_seen=False)
    alone, hist = fit_context_model(SEQS, 20, TEXT, settings=SETTINGS, config=config)
    if plateau is not None:
        assert hist["cuts"], hist["valid_ndcg@10"]  # the case is about a cut: one happened
    mp.spawn(_gloo_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path), config), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    expected = _state(alone)
    for got in ranks:
        assert got["state"].keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(got["state"][name], value, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got["scores"], alone.score_items(CONTEXTS), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["history"]["losses"], hist["losses"], rtol=1e-5)
        np.testing.assert_allclose(got["history"]["valid_ndcg@10"], hist["valid_ndcg@10"], atol=2e-5)
        assert got["history"]["train_users"] == hist["train_users"] and got["history"]["valid_users"] == 40
        assert got["history"]["cuts"] == hist["cuts"] and got["history"]["lr"] == pytest.approx(hist["lr"])
    for name in expected:  # the two workers hold one model
        np.testing.assert_array_equal(ranks[0]["state"][name], ranks[1]["state"][name])
    assert hist["losses"][-1] < hist["losses"][0]  # it trained: the comparison is not of two idle models


def _averaging_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        w, unused = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.zeros(2))
        x, y = torch.randn(7, 3), torch.randn(7, 5)  # the same batch in every worker
        mine = x[DataParallel(rank, world).shard(np.arange(7))]
        mine_y = y[DataParallel(rank, world).shard(np.arange(7))]
        ((mine @ w.T - mine_y) ** 2).sum(1).mean().backward()
        n, extra = DataParallel.current().average_gradients([w, unused], len(mine), (float(rank), 1.0))
        torch.save({"grad": w.grad.clone(), "unused": unused.grad, "n": n, "extra": extra}, f"{out}/g{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_averaged_gradient_is_the_whole_batch_gradient(tmp_path):
    """Uneven shares (4 and 3 rows): the count-weighted mean of the workers' gradients is the
    gradient of the mean loss over all 7 rows; a parameter no worker used keeps no gradient."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as each worker draws them
        w = torch.nn.Parameter(torch.randn(5, 3))
        x, y = torch.randn(7, 3), torch.randn(7, 5)
    ((x @ w.T - y) ** 2).sum(1).mean().backward()
    mp.spawn(_averaging_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2)
    for r in range(2):
        got = torch.load(tmp_path / f"g{r}.pt", weights_only=False)
        torch.testing.assert_close(got["grad"], w.grad, rtol=1e-5, atol=1e-6)
        assert got["unused"] is None and got["n"] == 7 and got["extra"] == [1.0, 2.0]


def test_a_bad_rank_or_world_size_is_refused():
    with pytest.raises(InvalidInputError, match="^world_size=0"):
        DataParallel(0, 0)
    with pytest.raises(InvalidInputError, match="^rank=2"):
        DataParallel(2, 2)
    with pytest.raises(InvalidInputError, match="^parallel="):
        DataParallel.current()  # no process group in this process


# -- on Ray ----------------------------------------------------------------------------------

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))
TRAIN_ARGS = ["--epochs", "3", "--dim", "16", "--max-len", "8", "--scorer-steps", "1", "--scorer-epochs", "1",
              "--users", "0", "--steps-per-user", "1", "--quiet"]


@pytest.fixture(scope="module")
def browsing(tmp_path_factory) -> Path:
    """An engine over the demo catalog (hashed-word vectors) and a log of :func:`planted` sequences
    over its first 20 items, each followed by two steps the head learns from."""
    root = tmp_path_factory.mktemp("ray_train")
    items = read_items(DEMO)
    with Engine.create(root / "engine", EngineConfig(index="flat", refresh_threads=0),
                       embedder=WordHashEmbedder()) as eng:
        eng.upsert_items(items)
        eng.save()
    lines = [json.dumps({"user_id": f"u{u}", "item_id": items[row].id, "kind": "click", "ts": 1000.0 + 60 * t})
             for u, seq in enumerate(planted(40)) for t, row in enumerate([*seq, 5 + u % 15, 6 + u % 14])]
    (root / "events.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _copy(root: Path, to: Path) -> Path:
    shutil.copytree(root / "engine", to)
    return to


def _untouched(engine: Path, browsing: Path) -> None:
    """No model folder written and the config (which names the model served) as it was."""
    assert not (engine / "models").exists()
    assert (engine / "recsieve.toml").read_text() == (browsing / "engine" / "recsieve.toml").read_text()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_cli_trains_the_encoder_on_two_ray_workers_into_the_same_model_folder(browsing, local_ray, tmp_path):
    folders, reports = {}, {}
    for name, extra in (("alone", []), ("ray", ["--ray", "--workers", "2"])):
        engine = _copy(browsing, tmp_path / name)
        out = tmp_path / f"{name}.json"
        assert main(["train", str(engine), "--events", str(browsing / "events.jsonl"), *TRAIN_ARGS, *extra,
                     "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
        folders[name] = Path(reports[name]["model"])
    alone, spread = folders["alone"], folders["ray"]
    assert _files(spread) == _files(alone)  # the same files ...
    for manifest in ("ranker.json", "context/manifest.json"):  # ... and manifests with the same keys
        ours, theirs = (json.loads((f / manifest).read_text()) for f in (spread, alone))
        assert ours.keys() == theirs.keys()
    ours, theirs = (json.loads((f / "context" / "manifest.json").read_text()) for f in (spread, alone))
    # the same settings but the fusion weight, chosen from a grid on held-out steps: with 3 epochs
    # on 40 users its choice turns on ties that the two runs' float rounding breaks either way
    tuned = [s["settings"].pop("extra")["recall_weight"] for s in (ours, theirs)]
    assert ours["settings"] == theirs["settings"] and ours["n_items"] == theirs["n_items"]
    assert all(weight in WEIGHT_GRID for weight in tuned)
    assert reports["ray"]["encoder"]["workers"] == 2 and "workers" not in reports["alone"]["encoder"]
    assert reports["ray"]["encoder"]["train_users"] == reports["alone"]["encoder"]["train_users"]
    with Engine.open(tmp_path / "ray", embedder=WordHashEmbedder()) as eng:  # switched to it, and it serves
        assert eng.model_dir == spread and eng.serving_model.context is not None
        assert "context.context_cross" in eng.ranking_head.features
        assert len(eng.recommend("u1", 5)) == 5


def _top1_accuracy(model, contexts, targets) -> float:
    scores = model.score_items(contexts)
    for row, ctx in zip(scores, contexts):
        row[ctx] = -np.inf  # consumed items are never recommended
    return float(np.mean(np.argmax(scores, 1) == np.asarray(targets)))


@pytest.mark.slow
def test_two_ray_workers_learn_what_one_process_learns(local_ray):
    from recsieve.training.ray_train import fit_context_model_on_ray

    # 4 heads: with one, the step that reads the item before B waits behind a plateau whose
    # length depends on the seed (1 head, 40 epochs: 0 of 4 seeds learned it, 1 of 4 with the former
    # N(0, 0.02) start of the attention; 5 of 5 in 100 epochs, 5 of 6 in 120; 4 heads, 40 epochs: 8 of 8)
    settings = ContextSettings(n_warm=20, text_dim=0, dim=32, max_len=8, heads=4, **NO_DROPOUT)
    config = TrainConfig(epochs=40, lr=5e-3, batch_size=16, bf16=False, valid_users=0, patience=None, threads=1)
    seqs = planted(200)
    alone, hist_alone = fit_context_model(seqs, 20, None, settings=settings, config=config)
    spread, hist = fit_context_model_on_ray(seqs, 20, None, settings=settings, config=config, workers=2)
    held_out = planted(100, seed=7)  # new fillers before each pattern
    contexts, targets = [s[:-1] for s in held_out], [int(s[-1]) for s in held_out]
    assert _top1_accuracy(alone, contexts, targets) >= 0.9
    assert _top1_accuracy(spread, contexts, targets) >= 0.9
    assert hist["workers"] == 2 and hist["losses"][-1] < hist["losses"][0] / 2
    # the same steps as the single process's: the first epochs' losses agree (later, rounding compounds)
    np.testing.assert_allclose(hist["losses"][:3], hist_alone["losses"][:3], rtol=1e-4)
    assert spread.n_items == 20 and spread.threads == 1


@pytest.mark.slow
def test_on_ray_bad_input_is_the_single_process_error(local_ray):
    from recsieve.training.ray_train import fit_context_model_on_ray

    settings = ContextSettings(n_warm=20, text_dim=8, dim=16, max_len=8)
    with pytest.raises(InvalidInputError, match="^workers=3: 3 workers x 1 CPUs do not fit the cluster's 2 CPUs"):
        fit_context_model_on_ray(SEQS, 20, TEXT, settings=settings, config=CONFIG, workers=3)
    with pytest.raises(InvalidInputError) as local:  # raised by the workers, given back as raised
        fit_context_model(SEQS, 20, TEXT[:5], settings=settings, config=CONFIG)
    with pytest.raises(InvalidInputError) as ours:
        fit_context_model_on_ray(SEQS, 20, TEXT[:5], settings=settings, config=CONFIG, workers=2)
    assert str(ours.value) == str(local.value) and ours.value.field == "text_vectors"


# -- errors before Ray starts (fast) ---------------------------------------------------------


def test_workers_must_be_positive(browsing, tmp_path, capsys):
    engine = _copy(browsing, tmp_path / "engine")
    for bad in ("0", "-1"):
        assert main(["train", str(engine), "--events", str(browsing / "events.jsonl"), "--workers", bad, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"recsieve train: error: workers={bad}") and err.count("\n") == 1
    _untouched(engine, browsing)
    with Engine.open(engine, embedder=WordHashEmbedder()) as eng:
        with pytest.raises(InvalidInputError, match="^ray_address='auto'"):
            train_engine(eng, ray_address="auto")  # an address alone: the workers are not guessed
    _untouched(engine, browsing)


def test_an_address_where_nothing_listens_fails_at_once(browsing, tmp_path, capsys):
    pytest.importorskip("ray")
    engine = _copy(browsing, tmp_path / "engine")
    assert main(["train", str(engine), "--events", str(browsing / "events.jsonl"), *TRAIN_ARGS,
                 "--ray", "127.0.0.1:1", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsieve train: error: address='127.0.0.1:1': no Ray cluster answers there")
    _untouched(engine, browsing)


def test_the_training_modules_import_no_ray_and_name_the_extra_without_it():
    got = run_python(
        "import json, sys\n"
        "import recsieve.training.ray_train, recsieve.training.data_parallel, recsieve.training.model\n"
        "loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from recsieve.errors import MissingDependencyError\n"
        "try:\n"
        "    recsieve.training.ray_train.fit_context_model_on_ray([[1, 2, 3]], 5, None)\n"
        "    error = None\n"
        "except MissingDependencyError as exc:\n"
        "    error = str(exc)\n"
        "print(json.dumps({'loaded': loaded, 'error': error}))\n"
    )
    assert got["loaded"] == []
    assert got["error"] is not None and "pip install 'recsieve[ray]'" in got["error"]


def test_errors_with_fields_survive_pickling():
    """A worker's error reaches the driver pickled: it comes back with its fields and message."""
    import pickle

    from recsieve.errors import DuplicateIdError, UnknownItemError

    for exc in (InvalidInputError("text_vectors", (5, 8), "expected (20, 8)"), DuplicateIdError("id", "a", "twice"),
                UnknownItemError("item_id", "x")):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
        assert (back.field, back.value) == (exc.field, exc.value)
