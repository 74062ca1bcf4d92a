"""Where onnxruntime's greedy decoding spends its time, by operator type.

    python benchmarks/profile_decode.py --bundle exported/m30k_fp32 [--int8] [--sentences 1000] \
        [--batch-size 64] [--name profile_decode]

Decodes the first `--sentences` test2016 sentences in length-sorted batches of
`--batch-size` (the `Translator`'s default) on one all-core session, once without and
once with onnxruntime's profiler. The table gives, per operator type, kernel
milliseconds per sentence, share and node runs per sentence; `Loop` is left out (its
time is its body's nodes, listed themselves). The notes give wall time with and
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
        steps = max_len or decode_limit(ids.shape[1], max_tgt_len)
        session.run(["ids"], {"source_ids": ids, "max_len": np.array(steps, np.int32)})
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


def kernel_times(profile_file: str, skip_runs: int) -> tuple[collections.Counter, collections.Counter]:
    """Microseconds and node runs per operator type, from an onnxruntime profile,
    leaving out the first `skip_runs` `run` calls (the warm-up)."""
    with open(profile_file, encoding="utf-8") as handle:
        events = json.load(handle)
    os.remove(profile_file)
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    since = run_starts[skip_runs]
    micros, runs = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= since:
            op = event["args"]["op_name"]
            micros[op] += event["dur"]
            runs[op] += 1
    return micros, runs


def profile(translator, batches, sentences: int, top: int) -> tuple[list[dict], dict]:
    path = translator.graphs["greedy"]
    warm_up = batches[:3]
    plain = translator.sessions["greedy"]
    run_batches(plain, warm_up, translator.max_tgt_len)
    plain_seconds = run_batches(plain, batches, translator.max_tgt_len)
    session = profiled_session(path, translator.threads)
    run_batches(session, warm_up, translator.max_tgt_len)
    seconds = run_batches(session, batches, translator.max_tgt_len)
    micros, runs = kernel_times(session.end_profiling(), skip_runs=len(warm_up))
    micros.pop("Loop", None)
    runs.pop("Loop", None)
    kernel_ms = sum(micros.values()) / 1000
    rows = [{"op": op, "ms / sentence": round(us / 1000 / sentences, 3),
             "share of kernel time": f"{100 * us / 1000 / kernel_ms:.1f} %",
             "runs / sentence": round(runs[op] / sentences, 1)} for op, us in micros.most_common(top)]
    matmul_ms = sum(us for op, us in micros.items() if op in MATMULS) / 1000
    summary = {"wall ms / sentence without profiler": round(1000 * plain_seconds / sentences, 3),
               "wall ms / sentence": round(1000 * seconds / sentences, 3),
               "kernel ms / sentence": round(kernel_ms / sentences, 3),
               "matrix-product kernels ms / sentence": round(matmul_ms / sentences, 3),
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
    parser.add_argument("--top", type=int, default=15, help="operator types listed")
    parser.add_argument("--name", default="profile_decode")
    args = parser.parse_args()

    from keras_attn.runtime import Translator
    from pipelines.corpus import read_lines

    translator = Translator.load(args.bundle, int8=args.int8)
    path = translator.graphs["greedy"]
    encoded = [ids for ids in translator.encode(read_lines(os.path.join(args.data_dir, "test_2016_flickr.de.gz")))
               if ids][: args.sentences]
    encoded.sort(key=len)
    batches = [encoded[i: i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
    rows, notes = profile(translator, batches, len(encoded), args.top)
    notes.update(encoder_split(translator, batches, len(encoded)))
    notes = {**notes, "graph": str(path), "threads": translator.threads, "sentences": len(encoded),
             "batch size": args.batch_size}
    print(notes, flush=True)
    write_results(args.name, rows, notes)


if __name__ == "__main__":
    main()
