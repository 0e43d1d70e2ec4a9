"""Does int8 with OpenVINO's dynamic quantisation beat ``openvino-bf16`` and keep neighbours?

    python bench/openvino_int8_weights.py --ml1m ../shared/data/ml-1m [--texts 2000]
        [--variants 32:0:0,32:128:0,32:64:1,64:128:0,128:0:0,0:0:0] [--json FILE]

An experiment (#17), not a backend: no recsieve code path uses it. The exported fp32 ONNX graph of
the bundled MiniLM (:func:`~recsieve.embedding_export.export_encoder`) is read into OpenVINO, and
each ``MatMul`` with a constant weight gets int8 weights: ``Constant(int8) -> Convert -> Multiply(scale)``,
the pattern OpenVINO's CPU plugin runs as a fully connected layer with compressed weights. With
``DYNAMIC_QUANTIZATION_GROUP_SIZE`` > 0 it also quantises each group of that many activations to int8
at run time and multiplies on the CPU's int8 (VNNI) instructions; 0 keeps the activations in bf16.

A variant ``DQ:WG:SKIP``: ``DQ`` the dynamic-quantisation group (0: weights only), ``WG`` the weights'
group along the input (0: one scale per output channel; the runtime quantises activations only where
``WG`` is 0 or at least ``DQ``), ``SKIP`` 1 to keep each FFN's down-projection (1,536 -> 384) unquantised.
Every variant runs with ``INFERENCE_PRECISION_HINT=bf16``, as ``openvino-bf16`` does.

For each, in one process, on ``--texts`` generated texts (``synthetic_items``, rendered as a
catalog renders them) in batches of 64 sorted by length, on the ``THROUGHPUT`` hint through an
``AsyncInferQueue`` (as :class:`~recsieve.embedding_export.GraphEncoder`): texts/s of three warm
calls; and the neighbour check of the ``scale`` bench section (each text's 10 nearest other
texts against fp32's, :func:`~recsieve.bench.scale.neighbour_recall`) on the generated texts and
on ML-1M's titles. The ``openvino`` fp32 and ``openvino-bf16`` rows are measured by the same loop.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def compress(model: Any, dq_group: int, weight_group: int, skip_down: bool) -> int:
    """Give each constant-weight MatMul of ``model`` int8 weights (symmetric, per output channel
    or per ``weight_group`` inputs); returns how many."""
    from openvino import opset13 as ops

    done = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul" or node.input(1).get_source_output().get_node().get_type_name() != "Constant":
            continue
        w = node.input(1).get_source_output().get_node().get_data().astype(np.float32)
        if w.ndim != 2 or w.size < 4096:
            continue
        wt = w if node.get_attributes()["transpose_b"] else w.T  # (out, in)
        out_dim, in_dim = wt.shape
        if skip_down and in_dim > out_dim:
            continue
        group = weight_group or in_dim
        grouped = wt.reshape(out_dim, in_dim // group, group)
        scale = np.abs(grouped).max(-1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(grouped / scale), -127, 127).astype(np.int8)
        weight = ops.multiply(ops.convert(ops.constant(q), "f32"), ops.constant(scale.astype(np.float32)))
        weight = ops.reshape(weight, ops.constant(np.array([out_dim, in_dim], np.int64)), False)
        mm = ops.matmul(node.input(0).get_source_output(), weight, False, True)
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(mm.output(0))
        done += 1
    return done


def embed_all(compiled: Any, tokenizer: Any, texts: list[str], repeats: int = 3) -> tuple[np.ndarray, list[float]]:
    """Unit vectors of ``texts`` and the texts/s of each of ``repeats`` calls (after one warm-up)."""
    import openvino as ov

    queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    enc = tokenizer(texts, truncation=True, max_length=256)
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    names = [i.get_any_name() for i in compiled.inputs]
    out = np.zeros((len(texts), compiled.outputs[0].get_partial_shape()[-1].get_length()), np.float32)

    def done(request: Any, rows: np.ndarray) -> None:
        out[rows] = request.get_output_tensor(0).data

    queue.set_callback(done)
    rates = []
    for call in range(repeats + 1):
        t = time.perf_counter()
        for lo in range(0, len(order), 64):
            rows = order[lo:lo + 64]
            width = int(lengths[rows].max())
            feed = {}
            for name in names:
                arr = np.zeros((len(rows), width), np.int64)
                for r, i in enumerate(rows):
                    arr[r, :len(enc[name][i])] = enc[name][i]
                feed[name] = arr
            queue.start_async(feed, rows)
        queue.wait_all()
        if call:
            rates.append(round(len(texts) / (time.perf_counter() - t), 1))
    return out / np.linalg.norm(out, axis=1, keepdims=True), rates


def main() -> None:
    import openvino as ov
    from transformers import AutoTokenizer

    from recsieve.bench.common import synthetic_items
    from recsieve.bench.scale import neighbour_recall
    from recsieve.catalog import Catalog
    from recsieve.embedding import DEFAULT_MODEL, resolve_model_path
    from recsieve.embedding_export import export_encoder
    from recsieve.evaluation.datasets import load_dataset
    from recsieve.quantization import cpu_isa

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ml1m", required=True, help="ML-1M folder: its titles join the neighbour check")
    ap.add_argument("--texts", type=int, default=2000, help="generated texts to embed (default 2000)")
    ap.add_argument("--variants", default="32:0:0,32:128:0,32:64:1,64:128:0,128:0:0,0:0:0",
                    help="comma-separated DQ:WG:SKIP variants (see the module docstring)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    model_path = resolve_model_path(DEFAULT_MODEL)
    graph = export_encoder(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    catalog = Catalog()
    sets = {"generated": [catalog.render(it) for it in synthetic_items(args.texts, 0)],
            "ml1m": list(load_dataset("ml-1m", args.ml1m).item_texts)}
    core = ov.Core()
    hint = {"PERFORMANCE_HINT": "THROUGHPUT"}
    reference = {name: embed_all(core.compile_model(core.read_model(str(graph)), "CPU",
                                                    {**hint, "INFERENCE_PRECISION_HINT": "f32"}), tokenizer, texts, 1)[0]
                 for name, texts in sets.items()}
    rows = []
    runs: list[tuple[str, dict[str, Any], tuple[int, int, bool] | None]] = [
        ("openvino (fp32)", {"INFERENCE_PRECISION_HINT": "f32"}, None),
        ("openvino-bf16", {"INFERENCE_PRECISION_HINT": "bf16"}, None)]
    for spec in args.variants.split(","):
        dq, wg, skip = (int(x) for x in spec.split(":"))
        runs.append((f"int8 weights {spec}", {"INFERENCE_PRECISION_HINT": "bf16",
                                              "DYNAMIC_QUANTIZATION_GROUP_SIZE": dq}, (dq, wg, bool(skip))))
    for label, config, variant in runs:
        row: dict[str, Any] = {"variant": label, "config": config}
        for name, texts in sets.items():
            model = core.read_model(str(graph))
            if variant is not None:
                row["quantised_matmuls"] = compress(model, *variant)
            vecs, rates = embed_all(core.compile_model(model, "CPU", {**hint, **config}), tokenizer, texts)
            if name == "generated":
                row["texts_per_s"] = rates
            row[f"recall@10_vs_fp32_{name}"] = round(neighbour_recall(reference[name], vecs), 4)
            row[f"min_cosine_{name}"] = round(float((reference[name] * vecs).sum(1).min()), 5)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"command": "python bench/openvino_int8_weights.py --ml1m ../shared/data/ml-1m "
                         f"--texts {args.texts} --variants {args.variants}",
              "isa": cpu_isa(), "openvino": ov.__version__, "texts": {k: len(v) for k, v in sets.items()},
              "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
