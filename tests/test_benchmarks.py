"""The benchmark scripts: their limits compute what they say, and each script runs
end to end on tiny inputs (a Multi30k-shaped folder of dates pairs), writing its
results under a temporary `KERAS_ATTN_RESULTS` instead of `benchmarks/results/`."""

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_limit  # noqa: E402
import bench_train  # noqa: E402
import step_costs  # noqa: E402
import targets  # noqa: E402


@pytest.mark.parametrize("vocab", [40, 10])  # a generator wider and narrower than the state
def test_the_onnx_limit_graph_computes_the_numpy_loop(vocab):
    """The onnxruntime decode limit times the same products as the NumPy loop (an
    unrolled graph, each step fed from the last), not a cheaper graph."""
    shape = dict(batch=3, src_len=4, emb=8, hidden=16, memory_dim=12, vocab=vocab)
    session, feed = bench_limit.onnx_decoder(steps=5, **shape)
    weights, x = bench_limit.decoder_weights(np.random.default_rng(0), **shape)
    expected = bench_limit.decoder_loop(weights, x.copy(), steps=5, hidden=16)
    (out,) = session.run(None, feed)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    one_step_fewer = bench_limit.decoder_loop(weights, x.copy(), steps=4, hidden=16)
    assert np.abs(out - one_step_fewer).max() > 1e-2  # so every step counts in the comparison


def test_the_per_core_decode_limit_runs_a_batch_per_core_at_once(monkeypatch):
    """`PER_CORE` times `thread_count` runs at once on one single-threaded session (as
    the `Translator`'s workers share theirs), each on its own thread, and counts them
    all: seconds per batch are the wall time over the runs."""
    import threading

    asked, runs, both_running = [], [], threading.Barrier(2, timeout=10)

    class Session:
        def run(self, names, feed):
            both_running.wait()  # fails unless the two runs overlap
            runs.append(threading.get_ident())
            time.sleep(0.5)

    def onnx_decoder(*shape, threads=None):
        asked.append(threads)
        return Session(), {}

    monkeypatch.setattr(bench_limit, "onnx_decoder", onnx_decoder)
    monkeypatch.setenv("KERAS_ATTN_THREADS", "2")
    seconds = bench_limit.decoder_seconds(bench_limit.PER_CORE, batch=4, steps=2, src_len=3, vocab=10)
    assert asked == [1] and len(runs) == 2 and len(set(runs)) == 2
    assert 0.25 <= seconds < 0.5  # two overlapped 0.5 s runs: about 0.25 s per batch


@pytest.fixture(scope="module")
def dates_as_multi30k(tmp_path_factory):
    """A folder laid out as Multi30k (train, val, test_2016_flickr; .de/.en gzip),
    holding dates pairs: human-written dates as "de", ISO dates as "en"."""
    from pipelines.dates import date_splits

    folder = tmp_path_factory.mktemp("dates_as_multi30k")
    splits = date_splits(train=600, seed=3)
    for name, split in (("train", splits["train"]), ("val", splits["valid"]), ("test_2016_flickr", splits["test"])):
        kept = None if name == "train" else 60  # small evaluation sets
        for lang, lines in (("de", split.sources[:kept]), ("en", split.targets[:kept])):
            with gzip.open(folder / f"{name}.{lang}.gz", "wt", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in lines))
    return folder


def run_script(script: str, *args, results: Path) -> dict:
    """`benchmarks/SCRIPT.py ARGS`, results under `results` (one results file, no other
    in that folder); returns the JSON it wrote."""
    env = {**os.environ, "KERAS_ATTN_RESULTS": str(results), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    written = sorted(results.glob("*.json"))
    assert len(written) == 1 and written[0].with_suffix(".md").is_file()
    return json.loads(written[0].read_text())


def test_bench_limit_runs(tmp_path):
    result = run_script("bench_limit", "--vocab", 50, "--batch", 4, "--steps", 2, "--src-len", 3,
                        "--latency-steps", 2, "--repeats", 1, results=tmp_path)
    limits = {row["limit"].split(",")[0] + " " + row["dtype"]: row["limit (fastest)"] for row in result["rows"]}
    assert len(limits) == 4 and all(value > 0 for value in limits.values())
    assert result["machine"]["cores"] == os.cpu_count()
    # the batched decode also as the Translator runs several batches; one sentence on one session only
    decode, one_sentence = result["rows"][:2]
    timed = [decode[lib] for lib in ("numpy", "onnxruntime", bench_limit.PER_CORE)]
    assert min(timed) > 0 and decode["limit (fastest)"] == max(timed)
    assert one_sentence[bench_limit.PER_CORE] == "-"
    # TensorFlow's training products, also with one thread per op (2,1) in a process of their own
    for row in result["rows"][2:]:
        timed = [row[lib] for lib in ("numpy", "tensorflow", "tensorflow 2,1") if row[lib] != "-"]
        assert row["tensorflow 2,1"] > 0 and row["limit (fastest)"] == max(timed)


def test_bench_translate_runs_and_scores_what_evaluate_scores(dates_run, dates_bundle, dates_as_multi30k, tmp_path):
    from pipelines.evaluate import evaluate

    result = run_script("bench_translate", "--train-dir", dates_run[0], "--bundle", dates_bundle, "--data-dir",
                        dates_as_multi30k, "--repeats", 1, "--latency-sentences", 3, results=tmp_path)
    rows = {(row["system"], row["search"]): row for row in result["rows"]}
    report, _ = evaluate(dates_bundle, dates_as_multi30k / "test_2016_flickr.de.gz",
                         dates_as_multi30k / "test_2016_flickr.en.gz")
    assert rows[("onnxruntime fp32", "greedy")]["BLEU"] == pytest.approx(report["bleu"], abs=0.005)
    for system in ("tf.function", "keras step loop (eager)"):  # the same greedy search, three ways
        assert rows[(system, "greedy")]["BLEU"] == rows[("onnxruntime fp32", "greedy")]["BLEU"]
    assert {("onnxruntime int8", "beam 5"), ("tf.function", "beam 5"), ("onnxruntime fp32", "greedy, batch 1")} \
        <= set(rows)
    assert rows[("onnxruntime fp32", "greedy")]["% of limit"] > 0


def test_bench_train_runs(dates_as_multi30k, tmp_path):
    result = run_script("bench_train", "--data-dir", dates_as_multi30k, "--steps", 3, "--warmup", 1,
                        "--batch-tokens", 128, "--precisions", "float32", "--xla", "0", "--threads", "2,1",
                        "--limit-threads", "1,1", "2,1", results=tmp_path)
    (row,) = result["rows"]
    assert "error" not in row and row["target tokens"] > 0 and row["target tokens/s"] > 0
    assert 0 < row["% of limit"] and 0 < row["% of same-batches limit"]
    assert row["TF threads inter-op, intra-op"] == "2, 1"  # as TensorFlow reports it ran
    # the limits also with one thread in all (another process); 2,1 is the timed process's own
    for name in ("limit", "same-batches limit"):
        assert [part.split(" ")[:-1] for part in row[f"{name} tokens/s by library"].split(" / ")] \
            == [["numpy"], ["tensorflow"], ["tensorflow", "1,1"]]


def test_bench_train_threads_are_two_counts():
    assert bench_train.thread_pair("2,1") == (2, 1) and bench_train.thread_pair("0,0") == (0, 0)
    for text in ("2", "2,1,1", "a,1", "-1,2"):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
            bench_train.thread_pair(text)


@pytest.mark.parametrize("script, args", [
    ("tune_beam", ["--beam", 2, "--alphas", 0, 1]),
    ("profile_decode", ["--sentences", 30, "--batch-size", 8]),
])
def test_bundle_scripts_run(script, args, dates_bundle, dates_as_multi30k, tmp_path):
    result = run_script(script, "--bundle", dates_bundle, "--data-dir", dates_as_multi30k, *args, results=tmp_path)
    assert result["rows"]


def test_tune_beam_refuses_beam_1_before_translating(dates_bundle, dates_as_multi30k, tmp_path):
    """Every alpha gave the greedy output and `--write` made the first the bundle's
    default; the refusal comes before any translation, and nothing is written."""
    before = (dates_bundle / "config.json").read_bytes()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tune_beam.py"), "--bundle", str(dates_bundle),
                           "--data-dir", str(dates_as_multi30k), "--beam", "1", "--write"], capture_output=True,
                          text=True, env={**os.environ, "KERAS_ATTN_RESULTS": str(tmp_path)}, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "--beam 1: the length penalty ranks a beam's hypotheses and greedy decoding has none" in done.stderr
    assert list(tmp_path.iterdir()) == [] and (dates_bundle / "config.json").read_bytes() == before


def test_significance_compares_translated_and_saved_outputs(dates_bundle, dates_as_multi30k, tmp_path):
    """Two systems translated, then the same comparison from their saved outputs."""
    from pipelines.evaluate import evaluate

    systems = ["--system", f"a={dates_bundle}:0.6", "--system", f"b={dates_bundle}:0"]
    fresh = run_script("significance", "--data-dir", dates_as_multi30k, *systems, results=tmp_path)
    for path in tmp_path.glob("significance_val.*"):
        path.unlink()
    saved = run_script("significance", "--data-dir", dates_as_multi30k, "--system", "a=saved", "--system", "b=saved",
                       results=tmp_path)
    assert saved["rows"] == fresh["rows"] and len(fresh["rows"]) == 4
    report, _ = evaluate(dates_bundle, dates_as_multi30k / "val.de.gz", dates_as_multi30k / "val.en.gz")
    assert float(fresh["rows"][0]["BLEU"]) == pytest.approx(report["bleu"], abs=0.005)


def test_compare_bundles_finds_a_bundle_equal_to_itself(dates_bundle, dates_as_multi30k, tmp_path):
    result = run_script("compare_bundles", "--bundle", f"A={dates_bundle}", "--bundle", f"B={dates_bundle}",
                        "--data-dir", dates_as_multi30k, "--passes", 4, "--latency-sentences", 3, results=tmp_path)
    assert len(result["rows"]) == 4 and all(row["greedy sentences/s"] > 0 for row in result["rows"])
    assert [row["outputs unlike A"] for row in result["rows"]] == [0, 0, 0, 0]


def test_ngram_blocking_without_blocking_is_the_exported_greedy(dates_run, dates_bundle, dates_as_multi30k, tmp_path):
    """Its step loop reproduces the bundle's greedy validation BLEU (so its rows compare like with like)."""
    from pipelines.evaluate import evaluate

    result = run_script("ngram_blocking", "--train-dir", dates_run[0], "--data-dir", dates_as_multi30k,
                        "--max-len", json.loads((dates_bundle / "config.json").read_text())["max_tgt_len"],
                        results=tmp_path)
    report, _ = evaluate(dates_bundle, dates_as_multi30k / "val.de.gz", dates_as_multi30k / "val.en.gz")
    assert result["rows"][0]["blocked n-gram"] == "none"
    assert result["rows"][0]["val BLEU"] == pytest.approx(report["bleu"], abs=0.005)


def score_run(args: list, tmp_path: Path, data: Path) -> subprocess.CompletedProcess:
    """`benchmarks/score_run.sh ARGS` run in `tmp_path` (its bundle goes to
    tmp_path/exported), results under tmp_path/results, data from `data`."""
    env = {**os.environ, "PYTHON": sys.executable, "DATA_DIR": str(data),
           "KERAS_ATTN_RESULTS": str(tmp_path / "results"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "score_run.sh"), *map(str, args)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)


def test_score_run_scores_a_run_as_the_results_were_scored(dates_run, dates_bundle, dates_as_multi30k, tmp_path,
                                                           monkeypatch):
    """`score_run.sh` on the dates run: exported again (the same greedy test2016 BLEU as
    the session's bundle of that run), alpha chosen on validation and stored in the
    bundle, test2016 scored four ways at that alpha, and the paired bootstrap against a
    saved baseline giving the validation BLEU `tune_beam.py` measured."""
    import common
    import significance

    from pipelines.corpus import read_lines
    from pipelines.evaluate import evaluate

    results = tmp_path / "results"
    monkeypatch.setattr(common, "RESULTS", results)
    val_refs = read_lines(dates_as_multi30k / "val.en.gz")
    for search in significance.SEARCHES:  # a saved baseline: the references themselves
        significance.save_hypotheses("val", "the references", search, val_refs)
    done = score_run([dates_run[0], "dates", "dates again", "the references"], tmp_path, dates_as_multi30k)
    assert done.returncode == 0, done.stderr[-3000:]

    tuned = json.loads((results / "multi30k_dates_tune_beam.json").read_text())
    config = json.loads((tmp_path / "exported" / "dates" / "config.json").read_text())
    alpha = tuned["notes"]["chosen alpha"]
    assert config["alpha"] == alpha and config["alpha_tuned_on"]["src"].endswith("val.de.gz")
    beams = [row for row in tuned["rows"] if row["search"] == "beam 5"]
    assert max(row["val BLEU"] for row in beams) == next(row["val BLEU"] for row in beams if row["alpha"] == alpha)

    scored = {(beam, precision): json.loads((results / f"evaluate_test2016_datesrun_beam{beam}_{precision}.json")
                                            .read_text()) for beam in (1, 5) for precision in ("fp32", "int8")}
    assert [(r["beam"], r["runtime"]) for r in scored.values()] == [(1, "onnx"), (1, "onnx-int8"), (5, "onnx"),
                                                                    (5, "onnx-int8")]
    assert scored[(5, "fp32")]["alpha"] == scored[(5, "int8")]["alpha"] == alpha
    report, _ = evaluate(dates_bundle, dates_as_multi30k / "test_2016_flickr.de.gz",
                         dates_as_multi30k / "test_2016_flickr.en.gz")
    assert scored[(1, "fp32")]["bleu"] == report["bleu"]

    rows = json.loads((results / "significance_dates_val.json").read_text())["rows"]
    assert [row["system"] for row in rows] == ["the references", "dates again"] * 2
    assert float(rows[0]["BLEU"]) == 100 and float(rows[1]["BLEU"]) == tuned["rows"][0]["val BLEU"]
    assert (results / "hypotheses" / "val" / "dates_again.beam5.txt").is_file()
    assert (results / "multi30k_dates_history.csv").read_bytes() == (dates_run[0] / "history.csv").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["RUN", "dates", "dates again"], "expected RUN NAME LABEL BASELINE [BASELINE ...], got 3 argument(s)"),
    (["{run}", "dates", "dates again", "no such system"], "BASELINE no such system: no saved outputs"),
    (["{data}", "dates", "dates again", "x"], "no {data}/history.csv"),
])
def test_score_run_refuses_bad_arguments_before_writing(args, message, dates_as_multi30k, tmp_path):
    """A wrong call stops with status 2 and says why, before exporting or writing results."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,loss\n")
    fill = {"run": run, "data": dates_as_multi30k}
    done = score_run([arg.format(**fill) for arg in args], tmp_path, dates_as_multi30k)
    assert done.returncode == 2 and message.format(**fill) in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_the_committed_experiments_table_is_what_the_result_files_say(tmp_path):
    """`experiments.py` run again over a copy of `benchmarks/results/` gives the committed table."""
    import shutil

    committed = ROOT / "benchmarks" / "results"
    shutil.copytree(committed, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("experiments.*"))
    env = {**os.environ, "KERAS_ATTN_RESULTS": str(tmp_path)}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "experiments.py")], check=True, env=env,
                   capture_output=True)
    again = json.loads((tmp_path / "experiments.json").read_text())
    assert again["rows"] == json.loads((committed / "experiments.json").read_text())["rows"]


def test_training_profilers_run(dates_run, dates_as_multi30k, tmp_path):
    gradients = run_script("bf16_gradients", "--train-dir", dates_run[0], "--data-dir", dates_as_multi30k,
                           "--batches", 2, results=tmp_path / "bf16")
    profile = run_script("profile_train_step", "--batch", 4, "--length", 4, "--steps", 2, "--profile-steps", 1,
                         results=tmp_path / "profile")
    assert gradients["rows"]
    op_types = [row for row in profile["rows"] if row["kind"] == "op type"]
    assert op_types and 0 < sum(row["share"] for row in op_types) <= 1.0001
    costs = run_script("step_costs", "--fit", "2x2", "2x4", "4x2", "--check", "3x3", "--steps", 1, "--rounds", 1,
                       "--data-dir", dates_as_multi30k, "--recipe-warmup", 1, "--recipe-steps", 2,
                       results=tmp_path / "costs")
    assert costs["notes"]["recipe batches"].startswith("2, mean ")
    assert [(row["shape"], row["role"]) for row in costs["rows"]] == [
        ("2x2", "fit"), ("2x4", "fit"), ("4x2", "fit"), ("3x3", "check")]
    assert all(row["step ms"] > 0 for row in costs["rows"])


def test_step_costs_fit_recovers_the_costs_that_made_the_times():
    shapes = [(4, 8), (4, 32), (16, 8), (16, 32), (32, 16)]
    truth = {"fixed": 0.0275, "per_position": 0.00136, "per_token": 0.000214}
    seconds = [step_costs.predict(truth, b, n) for b, n in shapes]
    fitted = step_costs.fit_costs(shapes, seconds)
    assert fitted == pytest.approx(truth, rel=1e-9)
    assert step_costs.predict(fitted, 8, 24) == pytest.approx(0.0275 + 0.00136 * 24 + 0.000214 * 192)


def test_step_costs_predicts_recipe_batches_from_their_shapes_and_real_tokens():
    def batch(rows, src_len, tgt_len, real):
        y = np.zeros((rows, tgt_len), "int32")
        y.flat[:real] = 5
        return {"source": np.ones((rows, src_len), "int32")}, y

    costs = {"fixed": 0.01, "per_position": 0.001, "per_token": 0.0001}
    # step 1: L = 5, 10 + 5 + 2 x 5 x 0.1 = 16 ms; step 2: L = 10, 10 + 10 + 4 x 10 x 0.1 = 24 ms
    prediction = step_costs.recipe_prediction(costs, [batch(2, 4, 6, 9), batch(4, 12, 8, 31)])
    assert prediction["recipe batches"] == "2, mean 3.0 sentences x 8.0 source / 7.0 target positions, " \
                                           "20.0 real target tokens"
    assert prediction["recipe step (predicted)"] == ("20.0 ms = fixed 10.0 (50 %) + per_position 7.5 (38 %) "
                                                     "+ per_token 2.5 (12 %)")
    assert prediction["recipe target tok/s (predicted)"] == "1,000"  # 40 real tokens in 40 ms


@pytest.mark.parametrize("shapes", [[(4, 8), (4, 16), (4, 32)], [(4, 8), (8, 8), (16, 8)], [(4, 8), (8, 16)],
                                    [(4, 8), (8, 4), (16, 2)]])  # one length; one batch; two; one token count
def test_step_costs_refuses_shapes_that_cannot_separate_the_costs(shapes):
    with pytest.raises(ValueError, match="separate the three costs"):
        step_costs.fit_costs(shapes, [0.1] * len(shapes))


@pytest.mark.parametrize("text", ["16", "16x", "ax4", "0x8", "4x-1"])
def test_step_costs_names_a_bad_shape(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=f"shape '{text}'"):
        step_costs.shape(text)


@pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")  # the mask is passed explicitly
def test_the_tf_tutorial_baseline_ignores_source_padding():
    """The baseline's decoder gives the same logits however much padding the source
    carries: its attention sees the source mask (Keras 3 would drop it on the way)."""
    import tensorflow as tf
    import tf_tutorial_baseline

    model = tf_tutorial_baseline.build_model(["ein hund", "zwei katzen laufen schnell"],
                                             ["a dog", "two cats run fast"])
    source = model.src_processor(tf.constant(["ein hund", "zwei katzen laufen schnell"])).to_tensor()
    padded = tf.concat([source, tf.zeros([2, 3], source.dtype)], axis=1)
    target_in = tf.constant([[2, 5], [2, 6]], tf.int64)
    logits, _ = model.decoder(model.encoder(source), source != 0, target_in)
    logits_padded, _ = model.decoder(model.encoder(padded), padded != 0, target_in)
    np.testing.assert_allclose(logits_padded.numpy(), logits.numpy(), atol=1e-5)


def test_tf_tutorial_baseline_runs_and_scores_the_bundle_as_evaluate_does(dates_bundle, dates_as_multi30k,
                                                                          tmp_path):
    from pipelines.evaluate import evaluate

    result = run_script("tf_tutorial_baseline", "--data-dir", dates_as_multi30k, "--epochs", 2, "--steps", 3,
                        "--bundle", dates_bundle, "--out", tmp_path / "run", results=tmp_path / "results")
    tutorial, bundle = result["rows"]
    assert tutorial["epochs x steps"] == "2 x 3" and tutorial["training target tok/s"] > 0
    assert tutorial["greedy sentences/s"] > 0 and (tmp_path / "run" / "tutorial.weights.h5").is_file()
    report, _ = evaluate(dates_bundle, dates_as_multi30k / "test_2016_flickr.de.gz",
                         dates_as_multi30k / "test_2016_flickr.en.gz")
    assert bundle["BLEU"] == pytest.approx(report["bleu"], abs=0.005) and bundle["greedy sentences/s"] > 0


def test_opennmt_baseline_reads_onmt_logs():
    """The OpenNMT-py comparison's figures come from these lines of its logs (OpenNMT-py
    itself needs PyTorch, which the tests do not install)."""
    import opennmt_baseline

    train_log = """\
[2026-11-28 03:23:04,011 INFO] Step 200/200000; acc: 25.5; ppl: 226.6; xent: 5.4; lr: 0.00100; sents:    3065; bsz:  215/ 230/15; 773/827 tok/s;     56 sec;
[2026-11-28 03:26:38,014 INFO] Step 1800/200000; acc: 58.5; ppl:  26.0; xent: 3.3; lr: 0.00100; sents:    2991; bsz:  214/ 231/15; 1638/1766 tok/s;    270 sec;
[2026-11-28 03:26:55,908 INFO] Validation perplexity: 26.2059
[2026-11-28 03:26:55,908 INFO] Validation accuracy: 58.0745
[2026-11-28 03:26:55,910 INFO] Saving checkpoint /tmp/onmt/run/model_step_1850.pt
[2026-11-28 03:31:00,000 INFO] Validation perplexity: 12.5
[2026-11-28 03:31:00,002 INFO] Saving checkpoint /tmp/onmt/run/model_step_3700.pt
[2026-11-28 03:35:00,000 INFO] Validation perplexity: 11.0
"""  # the last validation's checkpoint was never saved (the run was stopped)
    assert opennmt_baseline.validation_perplexities(train_log) == {1850: 26.2059, 3700: 12.5}
    assert opennmt_baseline.training_tokens_per_second(train_log) == [827.0, 1766.0]
    translate_log = """\
[2026-11-28 03:22:00,610 INFO] Loading checkpoint from speed512/model_step_200.pt
[2026-11-28 03:22:01,021 INFO] Loading data into the model
[2026-11-28 03:22:02,809 INFO] PRED SCORE: -1.5122, PRED PPL: 4.54 NB SENTENCES: 1000
"""
    assert opennmt_baseline.translation_seconds(translate_log) == pytest.approx(1.788)
    with pytest.raises(ValueError, match="PRED SCORE"):
        opennmt_baseline.translation_seconds(translate_log.splitlines()[1])


def stand_in(path: Path, exit_code: int = 0):
    """An executable at `path` that appends its name and arguments to `calls` beside it."""
    path.write_text(f'#!/usr/bin/env bash\necho "$(basename "$0") $*" >> "$(dirname "$0")/calls"\nexit {exit_code}\n')
    path.chmod(0o755)


def run_sh(framework: str, data: Path, tmp_path: Path, programs: tuple, trainer: str, train_exit: int):
    """`benchmarks/FRAMEWORK/run.sh DATA BUNDLE OUT 1 7` (1 minute, seed 7) with stand-ins
    for its venv's `programs` and for `trainer`, which exits with `train_exit`; returns
    (OUT, BUNDLE, the finished process)."""
    out, bundle = tmp_path / framework, tmp_path / "bundle"
    (out / "venv" / "bin").mkdir(parents=True)
    for program in programs:
        stand_in(out / "venv" / "bin" / program)
    stand_in(out / "venv" / "bin" / trainer, train_exit)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / framework / "run.sh"), str(data), str(bundle), str(out),
                           "1", "7"], capture_output=True, text=True, timeout=60)
    return out, bundle, done


def assert_unzipped(data: Path, folder: Path):
    """`folder` holds the Multi30k files of `data`, unzipped."""
    for name in ("train.de", "train.en", "val.de", "val.en", "test_2016_flickr.de", "test_2016_flickr.en"):
        with gzip.open(data / f"{name}.gz", "rt", encoding="utf-8") as handle:
            assert (folder / name).read_text(encoding="utf-8") == handle.read()


@pytest.mark.parametrize("train_exit, run_exit", [(0, 0), (124, 0), (1, 1)])
def test_opennmt_run_sh_fills_in_the_config_and_passes_the_seed(dates_as_multi30k, tmp_path, train_exit, run_exit):
    """`opennmt/run.sh` with stand-ins for the venv's programs (the real ones need
    PyTorch): the data unzipped, the configuration's paths filled in, the seed passed,
    sentencepiece installed (OpenNMT-py does not require it, yet its transform imports
    it), and `onmt_train` stopped at the time budget (timeout's 124) counted as done,
    any other failure not."""
    import yaml

    out, bundle, done = run_sh("opennmt", dates_as_multi30k, tmp_path, ("pip", "onmt_build_vocab"), "onmt_train",
                               train_exit)
    assert done.returncode == run_exit, done.stderr
    assert_unzipped(dates_as_multi30k, out / "data")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["corpus_1"]["path_src"] == str(out / "data" / "train.de")
    assert config["data"]["valid"]["path_tgt"] == str(out / "data" / "val.en")
    assert config["src_subword_model"] == str(bundle / "src.spm.model")
    assert config["tgt_subword_model"] == str(bundle / "tgt.spm.model")
    assert (config["save_model"], config["src_vocab"]) == (str(out / "model"), str(out / "vocab.src"))
    calls = (out / "venv" / "bin" / "calls").read_text().splitlines()
    assert calls[0].startswith("pip install") and "sentencepiece==" in calls[0] and "opennmt-py==3.5.1" in calls[0]
    assert calls[1:] == [f"onmt_build_vocab -config {out}/config.yaml -n_sample -1",
                         f"onmt_train -config {out}/config.yaml -seed 7"]


def test_joeynmt_baseline_reads_joeynmt_logs():
    """The JoeyNMT comparison's checkpoint and training figures come from these lines of
    its `validations.txt` and `train.log` (JoeyNMT itself needs PyTorch)."""
    import joeynmt_baseline

    validations = (  # the second validation was not a new best (no "*")
        "Steps: 2700\tloss: 2.70011\tacc: 0.46601\tppl: 14.87905\tbleu: 26.11\tLR: 0.00100000\t*\n"
        "Steps: 5400\tloss: 2.75000\tacc: 0.47000\tppl: 15.64\tbleu: 27.5\tLR: 0.00050000\t\n")
    assert joeynmt_baseline.validation_perplexities(validations) == {2700: 14.87905, 5400: 15.64}
    train_log = """\
2026-11-28 07:16:45,986 - INFO - joeynmt.training - Epoch   1, Step:      100, Batch Loss:     4.647974, \
Batch Acc: 0.148781, Tokens per Sec:      694, Lr: 0.001000
2026-11-28 07:17:16,760 - INFO - joeynmt.training - Epoch   1, Step:      200, Batch Loss:     3.990896, \
Batch Acc: 0.229162, Tokens per Sec:     1536, Lr: 0.001000
2026-11-28 07:20:12,212 - INFO - joeynmt.prediction - Generation took 14.4252[sec].
"""
    assert joeynmt_baseline.training_tokens_per_second(train_log) == [694.0, 1536.0]


@pytest.mark.parametrize("train_exit, run_exit", [(0, 0), (124, 0), (1, 1)])
def test_joeynmt_run_sh_fills_in_the_config_and_passes_the_seed(dates_as_multi30k, tmp_path, train_exit, run_exit):
    """`joeynmt/run.sh` with stand-ins for the venv's pip and Python (JoeyNMT needs
    PyTorch): the data unzipped, the configuration's paths and seed filled in, the two
    packages JoeyNMT 2.3.0 needs but does not pin installed, and training stopped at the
    time budget (timeout's 124) counted as done, any other failure not."""
    import yaml

    out, bundle, done = run_sh("joeynmt", dates_as_multi30k, tmp_path, ("pip",), "python", train_exit)
    assert done.returncode == run_exit, done.stderr
    assert_unzipped(dates_as_multi30k, out / "data")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["model_dir"], config["random_seed"]) == (str(out / "model"), 7)
    assert (config["data"]["train"], config["data"]["dev"]) == (str(out / "data" / "train"), str(out / "data" / "val"))
    assert config["data"]["test"] == str(out / "data" / "test_2016_flickr")
    assert config["data"]["src"]["tokenizer_cfg"]["model_file"] == str(bundle / "src.spm.model")
    assert config["data"]["trg"]["tokenizer_cfg"]["model_file"] == str(bundle / "tgt.spm.model")
    calls = (out / "venv" / "bin" / "calls").read_text().splitlines()
    assert calls[0].startswith("pip install") and "joeynmt==2.3.0" in calls[0]
    assert "importlib-metadata" in calls[0] and "sentencepiece==0.2.0" in calls[0]
    assert calls[1:] == [f"python -m joeynmt train {out}/config.yaml --skip-test"]


def test_joeynmt_translate_runs_the_best_checkpoint_at_the_asked_beam(tmp_path):
    """`joeynmt_baseline.joeynmt_translate` hands JoeyNMT's Python the run's configuration
    with the best checkpoint, the beam, its length penalty and batches of 64, and reads
    the translations and seconds from the last line `joeynmt/translate.py` prints (a
    stand-in here, which echoes the source upper-cased and keeps the configuration it was
    given); a failure names the source and shows JoeyNMT's error."""
    import joeynmt_baseline
    import yaml

    run = tmp_path / "run"
    (run / "venv" / "bin").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model_dir": "m", "testing": {"beam_size": 5, "n_best": 1}}))
    python = run / "venv" / "bin" / "python"
    python.write_text(f"""#!{sys.executable}
import json, shutil, sys
script, config, source = sys.argv[1:]
assert script.endswith("joeynmt/translate.py"), script
shutil.copy(config, {str(tmp_path / "seen.yaml")!r})
print("a line JoeyNMT printed first")
lines = open(source, encoding="utf-8").read().splitlines()
print(json.dumps({{"seconds": 0.25, "hypotheses": [line.upper() for line in lines]}}))
""")
    python.chmod(0o755)
    source = tmp_path / "src.de"
    source.write_text("ein hund\nzwei katzen\n", encoding="utf-8")
    assert joeynmt_baseline.joeynmt_translate(run, source, beam=4, alpha=0.6) == (["EIN HUND", "ZWEI KATZEN"], 0.25)
    seen = yaml.safe_load((tmp_path / "seen.yaml").read_text())
    assert seen == {"model_dir": "m", "testing": {"beam_size": 4, "beam_alpha": 0.6, "n_best": 1, "batch_size": 64,
                                                   "load_model": str(run / "model" / "best.ckpt")}}
    python.write_text("#!/usr/bin/env bash\necho 'AssertionError: The input sentence is empty!' >&2\nexit 3\n")
    with pytest.raises(SystemExit, match=r"(?s)failed on .*src\.de \(exit 3\).*input sentence is empty"):
        joeynmt_baseline.joeynmt_translate(run, source, beam=5)


def test_the_baselines_command_line_puts_the_bundle_beside_the_framework(dates_bundle, dates_as_multi30k, tmp_path,
                                                                        monkeypatch):
    """`opennmt_baseline.compare`, the command line of `opennmt_baseline.py` and
    `joeynmt_baseline.py`: the other framework's rows (a stand-in here) get the run's
    unzipped test2016, then the bundle's greedy and beam-5 rows follow, scored as
    `evaluate` scores them, with the command among the notes; the framework's outputs
    are saved for `significance.py`, which sets them against the bundle's."""
    import common
    import opennmt_baseline

    from pipelines.corpus import read_lines
    from pipelines.evaluate import evaluate

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    for name in ("test_2016_flickr.de", "test_2016_flickr.en"):
        with gzip.open(dates_as_multi30k / f"{name}.gz", "rt", encoding="utf-8") as handle:
            (run / "data" / name).write_text(handle.read(), encoding="utf-8")
    refs = read_lines(run / "data" / "test_2016_flickr.en")
    # the stand-in's greedy outputs are the references; its beam-5 ones all the same line
    outputs, seen = {"greedy": refs, "beam 5": [refs[0]] * len(refs)}, []

    def framework_rows(*args):
        seen.append(args)
        return [{"system": "stand-in", "search": "greedy", "BLEU": 1.0, "sentences/s": 2.0}], {"fact": "noted"}, outputs

    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    argv = ["--run", str(run), "--bundle", str(dates_bundle)]
    opennmt_baseline.compare(argv, "A stand-in.\n\nMore.", "Stand-in", "standin", framework_rows)
    result = json.loads((tmp_path / "results" / "standin_baseline.json").read_text())
    assert seen == [(run, dates_bundle, run / "data", refs)]
    stand_in_row, greedy, beam = result["rows"]
    assert stand_in_row == {"system": "stand-in", "search": "greedy", "BLEU": 1.0, "sentences/s": 2.0}
    assert greedy["system"] == beam["system"] == f"keras-attn {dates_bundle.name} (onnxruntime fp32)"
    assert (greedy["search"], beam["search"]) == ("greedy", "beam 5")
    report, _ = evaluate(dates_bundle, dates_as_multi30k / "test_2016_flickr.de.gz",
                         dates_as_multi30k / "test_2016_flickr.en.gz")
    assert greedy["BLEU"] == pytest.approx(report["bleu"], abs=0.005) and greedy["sentences/s"] > 0
    assert result["notes"] == {"fact": "noted", "command": "python benchmarks/standin_baseline.py " + " ".join(argv)}
    for path in (tmp_path / "results").glob("standin_baseline.*"):
        path.unlink()
    paired = run_script("significance", "--split", "test2016", "--data-dir", dates_as_multi30k,
                        "--system", f"bundle={dates_bundle}:0.6", "--system", "standin_baseline=saved",
                        results=tmp_path / "results")
    bleu = {(row["search"], row["system"]): float(row["BLEU"]) for row in paired["rows"]}
    assert bleu[("greedy", "standin_baseline")] == 100.0
    assert bleu[("beam 5", "standin_baseline")] == pytest.approx(common.bleu(outputs["beam 5"], refs), abs=0.005)
    assert bleu[("greedy", "bundle")] == pytest.approx(report["bleu"], abs=0.005)


def test_joeynmt_length_penalty_is_chosen_on_validation(tmp_path, monkeypatch):
    """JoeyNMT's beam-5 α is the one of `tune-alpha`'s grid whose validation translations
    score best (a stand-in translates perfectly at α = 0.6 only), every α scored once."""
    import joeynmt_baseline

    from pipelines.evaluate import ALPHAS

    refs = ["a dog runs on the grass .", "two men sit on a bench .", "a girl in red jumps ."]
    (tmp_path / "val.en").write_text("".join(line + "\n" for line in refs), encoding="utf-8")
    asked = []

    def translate(run, source, beam, alpha):
        asked.append((source.name, beam, alpha))
        return (refs if alpha == 0.6 else [line.upper() for line in refs]), 1.0

    monkeypatch.setattr(joeynmt_baseline, "joeynmt_translate", translate)
    alpha, rows = joeynmt_baseline.tuned_alpha(tmp_path / "run", tmp_path)
    assert alpha == 0.6 and asked == [("val.de", 5, a) for a in ALPHAS]
    assert [row["alpha"] for row in rows] == list(ALPHAS) and max(row["bleu"] for row in rows) == 100.0


COMMITTED = ROOT / "benchmarks" / "results"


def test_targets_grades_the_committed_intel_results_as_results_md_does():
    translate = targets.grades_of(COMMITTED / "bench_translate_bt256xeon.json")
    assert {row["target"]: row["met"] for row in translate} == {
        "test2016 BLEU, beam 5": "yes", "test2016 BLEU, greedy": "yes", "fp32 greedy sentences/s": "yes",
        "fp32 greedy % of the limit": "no", "int8 greedy sentences/s": "yes", "batch-1 p50 ms, fp32": "yes",
        "batch-1 p50 ms, int8": "yes", "int8 BLEU loss, greedy": "yes", "int8 BLEU loss, beam 5": "yes"}
    measured = {row["target"]: row["measured"] for row in translate}
    assert measured["fp32 greedy % of the limit"] == 68.3 and measured["int8 BLEU loss, greedy"] == 0.35
    train = targets.grades_of(COMMITTED / "bench_train_xeon.json")
    assert [(row["measured"], row["met"]) for row in train] == [(1911.3, "no"), (2489.7, "no"), (2813.6, "yes")]


def test_targets_refuses_files_that_are_not_complete_results(tmp_path):
    not_json = tmp_path / "notes.json"
    not_json.write_text("no", encoding="utf-8")
    with pytest.raises(ValueError, match="notes.json: not a benchmark result file"):
        targets.grades_of(not_json)
    other = tmp_path / "bench_limit.json"
    other.write_text(json.dumps({"rows": [{"limit": "greedy decode", "dtype": "float32"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match="bench_limit.json: neither a bench_translate nor a bench_train"):
        targets.grades_of(other)
    partial = tmp_path / "bench_translate.json"
    partial.write_text(json.dumps({"rows": [{"system": "onnxruntime fp32", "search": "greedy", "BLEU": 40.0}]}),
                       encoding="utf-8")
    with pytest.raises(ValueError, match="no 'BLEU' for onnxruntime fp32 / beam 5"):
        targets.grades_of(partial)


def test_targets_bounds_are_inclusive():
    assert targets.grade("f", "t", 2800.0, 2800.0)["met"] == "yes"
    assert targets.grade("f", "t", 2799.9, 2800.0)["met"] == "no"
    assert targets.grade("f", "t", 10.0, 10.0, at_least=False)["met"] == "yes"
    assert targets.grade("f", "t", 10.01, 10.0, at_least=False)["met"] == "no"


def test_targets_command_writes_its_table_and_names_a_bad_file(tmp_path):
    graded = run_script("targets", COMMITTED / "bench_train_1k_xeon.json", "--name", "graded", results=tmp_path)
    assert [row["met"] for row in graded["rows"]] == ["yes", "yes"]
    assert (tmp_path / "graded.md").read_text(encoding="utf-8").count("| yes |") == 2
    missing = tmp_path / "missing.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "targets.py"), str(missing)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "missing.json: not a benchmark result file" in done.stderr
