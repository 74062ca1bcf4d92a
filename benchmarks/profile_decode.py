"""Where onnxruntime's greedy decoding spends its time, by operator type.

    python benchmarks/profile_decode.py --bundle exported/m30k_fp32 [--int8] [--sentences 1000] \
        [--batch-size 64] [--threads 1] [--name profile_decode]

Decodes the first `--sentences` test2016 sentences in length-sorted batches of
`--batch-size` (the `Translator`'s default) on one session of `--threads` intra-op
threads (default 1: each of the `Translator`'s workers runs one batch on a
single-threaded session; `0` = all cores, as before 2026-11-27), once without and
once with onnxruntime's profiler. The table gives, per operator type, kernel
milliseconds per sentence, share and node runs per sentence, and for matrix
products (and `LSTM`) their multiply-adds per second, counted from the profiled
shapes, against the peak of one large float32 `MatMul` (2048 x 2048 x 2048) on the
same number of threads (int8 products may exceed it); `Loop` is left out (its time is its body's nodes, listed
themselves). The notes give wall time with and
without the profiler: the profiler costs several microseconds per node, so at batch 1
(~2,000 node runs per sentence) it triples the wall time and its table is not the
unprofiled run's; at batch 64 it adds a few percent. "between kernels" is profiled
wall time minus summed kernel time.

It also splits the time between encoder and decoder without the profiler: decoding
with `max_len` 1 and 2 (medians of 5 interleaved passes) gives the encoder plus one
step and one step more. No TensorFlow import: the deployment runtime alone.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, write_results  # noqa: E402

MATMULS = {"MatMul", "Gemm", "FusedGemm", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
           "MatMulIntegerToFloat"}
LSTMS = {"LSTM", "DynamicQuantizeLSTM"}


def multiply_adds(op: str, args: dict) -> int:
    """Multiply-adds of one profiled node run, from its shapes (0 for other ops).

    A product's output `(..., m, n)` takes `k` multiply-adds per element, `k` the first
    input's last axis (no transposed first input in our graphs; prepacked weights are
    not in the profile's shapes, the output is). An LSTM's `Y (seq, dirs, batch, H)`
    takes `4 (input + H)` per element."""
    if op not in MATMULS | LSTMS:
        return 0
    first_in = next(iter(args["input_type_shape"][0].values()))
    first_out = next(iter(args["output_type_shape"][0].values()))
    if op in LSTMS:
        return int(np.prod(first_out)) * 4 * (first_in[-1] + first_out[-1])
    return int(np.prod(first_out)) * first_in[-1]


def gemm_peak(threads: int, n: int = 2048) -> float:
    """Multiply-adds per second of onnxruntime's `MatMul` on one large square product
    (best of 5) on `threads` intra-op threads: what the CPU's matrix units can do."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from keras_attn.runtime.translator import session_options

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    feed = {"a": rng.standard_normal((n, n), dtype=np.float32)}
    session.run(None, feed)
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, feed)
        seconds.append(time.perf_counter() - start)
    return n ** 3 / min(seconds)


def profiled_session(path, threads: int):
    import onnxruntime as ort

    from keras_attn.runtime.translator import session_options

    options = session_options(threads)
    options.enable_profiling = True
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batches(session, batches, max_tgt_len: int, max_len: int | None = None) -> float:
    """Seconds to decode `batches` (lists of id lists), one `run` each; `max_len`
    fixes the number of decoder steps."""
    from keras_attn.runtime.translator import decode_limit, pre_pad

    start = time.perf_counter()
    for rows in batches:
        ids = pre_pad(rows).astype(np.int32)
        session.run(["ids"], {"source_ids": ids, "max_len": decode_limit([len(r) for r in rows], max_tgt_len, max_len)})
    return time.perf_counter() - start


def encoder_split(translator, batches, sentences: int) -> dict:
    """Encoder and per-step decoder ms per sentence, from runs capped at 1 and 2 steps."""
    session, cap = translator.sessions["greedy"], translator.max_tgt_len
    times = {1: [], 2: [], None: []}
    for _ in range(5):
        for max_len in times:
            times[max_len].append(run_batches(session, batches, cap, max_len))
    one, two, full = (1000 * float(np.median(times[k])) / sentences for k in (1, 2, None))
    encoder = one - (two - one)
    return {"encoder ms / sentence": round(encoder, 3), "one decoder step ms / sentence": round(two - one, 3),
            "full decode ms / sentence": round(full, 3), "encoder share": f"{100 * encoder / full:.0f} %"}


def kernel_times(profile_file: str, skip_runs: int) -> tuple[collections.Counter, ...]:
    """Microseconds, node runs and multiply-adds per operator type, from an
    onnxruntime profile, leaving out the first `skip_runs` `run` calls (the warm-up)."""
    with open(profile_file, encoding="utf-8") as handle:
        events = json.load(handle)
    os.remove(profile_file)
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    since = run_starts[skip_runs]
    micros, runs, macs = collections.Counter(), collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= since:
            op = event["args"]["op_name"]
            micros[op] += event["dur"]
            runs[op] += 1
            macs[op] += multiply_adds(op, event["args"])
    return micros, runs, macs


def profile(translator, batches, sentences: int, top: int, peak: float) -> tuple[list[dict], dict]:
    """Per-operator table and summary of decoding `batches` on the translator's session
    and on a profiled one with as many threads; `peak` is `gemm_peak`'s multiply-adds/s."""
    warm_up, session = batches[:3], translator.sessions["greedy"]
    run_batches(session, warm_up, translator.max_tgt_len)
    plain_seconds = run_batches(session, batches, translator.max_tgt_len)
    profiled = profiled_session(translator.graphs["greedy"], translator.threads)
    run_batches(profiled, warm_up, translator.max_tgt_len)
    seconds = run_batches(profiled, batches, translator.max_tgt_len)
    micros, runs, macs = kernel_times(profiled.end_profiling(), skip_runs=len(warm_up))
    for counter in (micros, runs, macs):
        counter.pop("Loop", None)
    kernel_ms = sum(micros.values()) / 1000

    def rate(op_macs, us):  # multiply-adds per second, and as a share of the (float32) peak
        if not op_macs:
            return {"GMAC/s": "", "% of peak": ""}
        per_second = op_macs / (us * 1e-6)
        return {"GMAC/s": round(per_second / 1e9, 1), "% of peak": round(100 * per_second / peak, 1)}

    rows = [{"op": op, "ms / sentence": round(us / 1000 / sentences, 3),
             "share of kernel time": f"{100 * us / 1000 / kernel_ms:.1f} %",
             "runs / sentence": round(runs[op] / sentences, 1), **rate(macs[op], us)}
            for op, us in micros.most_common(top)]
    products = [op for op in micros if op in MATMULS | LSTMS]
    product_us, product_macs = sum(micros[op] for op in products), sum(macs[op] for op in products)
    summary = {"wall ms / sentence without profiler": round(1000 * plain_seconds / sentences, 3),
               "wall ms / sentence": round(1000 * seconds / sentences, 3),
               "kernel ms / sentence": round(kernel_ms / sentences, 3),
               "matrix-product kernels ms / sentence (LSTM included)": round(product_us / 1000 / sentences, 3),
               "matrix products, millions of multiply-adds / sentence": round(product_macs / 1e6 / sentences, 1),
               "matrix products GMAC/s": rate(product_macs, product_us)["GMAC/s"],
               "peak GMAC/s (one 2048^3 MatMul, same threads)": round(peak / 1e9, 1),
               "matrix products at the peak, ms / sentence": round(1000 * product_macs / peak / sentences, 3),
               "other kernels ms / sentence": round((kernel_ms - product_us / 1000) / sentences, 3),
               "between kernels ms / sentence": round((1000 * seconds - kernel_ms) / sentences, 3),
               "node runs / sentence": round(sum(runs.values()) / sentences, 1)}
    return rows, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads; 0 = all cores")
    parser.add_argument("--top", type=int, default=15, help="operator types listed")
    parser.add_argument("--name", default="profile_decode")
    args = parser.parse_args()

    from keras_attn.runtime import Translator
    from pipelines.corpus import read_lines

    translator = Translator.load(args.bundle, int8=args.int8, threads=args.threads or None)
    path = translator.graphs["greedy"]
    encoded = [ids for ids in translator.encode(read_lines(os.path.join(args.data_dir, "test_2016_flickr.de.gz")))
               if ids][: args.sentences]
    encoded.sort(key=len)
    batches = [encoded[i: i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
    rows, notes = profile(translator, batches, len(encoded), args.top, gemm_peak(translator.threads))
    notes.update(encoder_split(translator, batches, len(encoded)))
    notes = {**notes, "graph": str(path), "threads": translator.threads, "sentences": len(encoded),
             "batch size": args.batch_size}
    print(notes, flush=True)
    write_results(args.name, rows, notes)


if __name__ == "__main__":
    main()
