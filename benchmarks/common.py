"""Shared helpers for the benchmark scripts: machine facts and result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Where results go: benchmarks/results/, or $KERAS_ATTN_RESULTS (the tests' smoke runs).
RESULTS = Path(os.environ.get("KERAS_ATTN_RESULTS") or Path(__file__).resolve().parent / "results")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


# CPU features that decide matmul speed: bf16 is only fast with avx512_bf16 or AMX.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def machine() -> dict:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "simd": " ".join(f for f in SIMD_FLAGS if f in flags) or "unknown",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            # set, it pins OpenBLAS (NumPy's matmuls) to one kernel family: Haswell keeps it off AVX-512
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)")}


def batch1_millis(translator, sentences: list[str], beam: int = 1) -> list[float]:
    """Milliseconds of `translator.translate([sentence], beam)`, one sentence at a time."""
    millis = []
    for sentence in sentences:
        start = time.perf_counter()
        translator.translate([sentence], beam=beam)
        millis.append(1000 * (time.perf_counter() - start))
    return millis


def median_rate(translate, sentences: list[str], repeats: int = 3):
    """(outputs, median sentences/s of `translate(sentences)` over `repeats` passes after
    a warm-up pass)."""
    outputs = translate(sentences)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        translate(sentences)
        rates.append(len(sentences) / (time.perf_counter() - start))
    return outputs, statistics.median(rates)


def bleu(outputs: list[str], refs: list[str], lowercase: bool = False) -> float:
    """Corpus sacreBLEU (13a), rounded to 2 decimals; `force`: tokenized outputs such as
    "a dog ." are scored as they are (13a tokenizes them as it tokenizes "a dog.")."""
    import sacrebleu

    return round(sacrebleu.corpus_bleu(outputs, [refs], lowercase=lowercase, force=True).score, 2)


def result_from_child(script: str, flag: str, args: list[str]):
    """Run `script` again in a child process with `flag` added to `args` (there: the part
    that must not import TensorFlow) and return what it printed with `print_result`."""
    child = subprocess.run([sys.executable, script, flag, *args], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))[7:])


def print_result(value) -> None:
    """The child's side of `result_from_child`: `value` as one JSON line."""
    print("RESULT " + json.dumps(value), flush=True)


def thread_pair(text: str) -> tuple[int, int]:
    """`INTER,INTRA` (each >= 0) as two ints: TensorFlow's inter-op and intra-op thread
    counts (0 = its own choice); argparse's type for the scripts' thread flags."""
    try:
        inter, intra = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INTER,INTRA (two integers), got {text!r}") from None
    if inter < 0 or intra < 0:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 0, got {text!r}")
    return inter, intra


def thread_text(pair) -> str:
    """`(INTER, INTRA)` as "INTER,INTRA", the form `thread_pair` reads."""
    return ",".join(map(str, pair))


def write_results(name: str, rows: list[dict], notes: dict | None = None) -> Path:
    """`results/NAME.json` and `results/NAME.md` (a table of `rows`)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "notes": notes or {}, "rows": rows}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [f"# {name}", "", f"Machine: {payload['machine']['cpu']} ({payload['machine']['simd']}), "
             f"{payload['machine']['cores']} cores, {payload['machine']['date']}, "
             f"OPENBLAS_CORETYPE {payload['machine']['OPENBLAS_CORETYPE']}", ""]
    lines += markdown_table(rows)
    for key, value in (notes or {}).items():
        lines.append(f"\n{key}: {value}")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return RESULTS / f"{name}.md"


def markdown_table(rows: list[dict]) -> list[str]:
    """`rows` as Markdown table lines, one column per key in first-seen order."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |" for row in rows]


def fmt(value):
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def recipe_config(**overrides):
    """The reference recipe's `TrainConfig` (configs/multi30k_deen.yaml), with overrides."""
    from pipelines.config import TrainConfig

    recipe = TrainConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / "multi30k_deen.yaml")
    return TrainConfig(**{**recipe, **overrides})


def recipe_model_on_random_ids(precision: str = "float32"):
    """The reference recipe's model, built and compiled for training in `precision`
    (the recipe's SentencePiece vocabulary sizes, which its tokenizers reach on
    Multi30k, without training the tokenizers), and `random_batch(rng, batch, length)`
    making `(x, y)` training batches of random non-special ids, `length` on both sides;
    then the two vocabularies' sizes."""
    import keras
    import numpy as np

    from pipelines.train import build_model, model_config, vocab_sizes

    cfg = recipe_config(precision=precision)
    keras.mixed_precision.set_global_policy(precision)
    src_vocab, tgt_vocab = vocab_sizes(cfg)
    model = build_model(cfg, model_config(cfg, src_vocab, tgt_vocab))

    def random_batch(rng: np.random.Generator, batch: int, length: int):
        shape = (batch, length)
        x = {"source": rng.integers(4, src_vocab, shape).astype("int32"),
             "target_in": rng.integers(4, tgt_vocab, shape).astype("int32")}
        return x, rng.integers(4, tgt_vocab, shape).astype("int32")

    return model, random_batch, src_vocab, tgt_vocab
