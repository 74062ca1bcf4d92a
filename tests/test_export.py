import json
import os
import shutil
import subprocess
import sys
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from keras_attn.runtime import BundleError, Translator, TruncationWarning
from keras_attn.runtime.translator import (
    BUNDLE_FORMAT,
    INT32_MAX,
    N_BEST_OUTPUTS,
    pre_pad,
    sha256,
    strip_special,
)
from keras_attn.saving import load_model
from keras_attn.search import InferenceModel
from pipelines import cli
from pipelines.dates import date_corpus
from pipelines.evaluate import evaluate, tune_alpha
from pipelines.export import ExportError, export


@pytest.fixture(scope="module")
def held_out():
    return date_corpus(200, seed=99)


@pytest.fixture(scope="module")
def tf_side(dates_run, dates_bundle):
    model = load_model(dates_run[0] / "model.keras")
    return model, InferenceModel(model), Translator.load(dates_bundle)


def test_bundle_contents_and_config(dates_bundle):
    names = {p.name for p in dates_bundle.iterdir()}
    assert names == {"config.json", "model.onnx", "model_beam.onnx", "model.int8.onnx", "model_beam.int8.onnx",
                     "weights.bin", "weights.int8.bin", "src.spm.model", "tgt.spm.model"}
    config = json.loads((dates_bundle / "config.json").read_text())
    assert config["opset"] == 17 and config["beam"] == 3 and config["eos_id"] == 3
    assert len(config["tokenizers"]["src"]["sha256"]) == 64
    assert set(config["weights"]) == {"weights.bin", "weights.int8.bin"}
    # dates in several languages: no language pair on record (the language settings name Multi30k's files)
    assert (config["corpus"], config["source_language"], config["target_language"]) == ("dates", None, None)
    assert not list(dates_bundle.parent.glob(".dates.*"))  # no staging folder left behind


def test_the_greedy_and_beam_graphs_share_one_copy_of_the_weights(dates_bundle):
    """Each precision's two graphs keep their large tensors in one external-data file,
    each distinct tensor stored once: the file holds about one graph's weights, not two."""
    import onnx

    from pipelines.export import initializers

    for precision in ("", ".int8"):
        stored = {}  # (offset, length) -> graphs using it
        for graph in (f"model{precision}.onnx", f"model_beam{precision}.onnx"):
            proto = onnx.load(str(dates_bundle / graph), load_external_data=False)
            external = [t for t in initializers(proto.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
            assert external and all(len(t.raw_data) < 1024 for t in initializers(proto.graph)
                                    if t.data_location != onnx.TensorProto.EXTERNAL)
            for tensor in external:
                entry = {e.key: e.value for e in tensor.external_data}
                assert entry["location"] == f"weights{precision}.bin"
                stored.setdefault((int(entry["offset"]), int(entry["length"])), set()).add(graph)
            assert (dates_bundle / graph).stat().st_size < 200_000
        greedy_graph = f"model{precision}.onnx"
        assert all(len(users) == 2 for users in stored.values() if greedy_graph in users)  # all of greedy's shared
        data_size = (dates_bundle / f"weights{precision}.bin").stat().st_size
        assert sum(length for _, length in stored) <= data_size < sum(length for _, length in stored) + 4096 * len(stored)


def test_graphs_use_standard_ops_an_lstm_encoder_one_decode_loop_and_a_folded_embedding(dates_bundle):
    import onnx

    from pipelines.export import iter_nodes

    config = json.loads((dates_bundle / "config.json").read_text())
    for name in ("model.onnx", "model_beam.onnx"):
        proto = onnx.load(str(dates_bundle / name))
        onnx.checker.check_model(proto)
        ops = [n.op_type for n in iter_nodes(proto.graph)]
        assert ops.count("Loop") == 1 and ops.count("LSTM") == 1  # the decode loop; the encoder's LSTM op
        assert {n.domain for n in iter_nodes(proto.graph)} <= {"", "ai.onnx"}
        # The decoder's embedding product is folded into a (vocab, 4 * units) table the
        # loop gathers from (InputFeedingDecoder.step_weights(fold_embeddings=True)).
        loop = next(n for n in proto.graph.node if n.op_type == "Loop")
        body = next(a.g for a in loop.attribute if a.name == "body")
        shapes = {i.name: tuple(i.dims) for i in body.initializer}
        vocab, units = config["model"]["tgt_vocab_size"], config["model"]["decoder_units"]
        assert any(n.op_type == "Gather" and shapes.get(n.input[0]) == (vocab, 4 * units) for n in body.node)


@pytest.mark.parametrize("layers,bidirectional", [(1, True), (2, True), (2, False)])
def test_onnx_encoder_equals_keras_encoder_on_pre_padded_rows(layers, bidirectional):
    import onnxruntime as ort

    from keras_attn import Encoder
    from pipelines.onnx_encoder import encoder_model
    from tests.helpers import random_ids

    rng = np.random.default_rng(layers)
    encoder = Encoder(vocab_size=30, embedding_dim=8, units=6, num_layers=layers, bidirectional=bidirectional,
                      decoder_units=10)
    encoder.build((None, None))
    for weight in encoder.weights:  # random biases too: zero ones would hide a gate-order mistake
        weight.assign(rng.normal(scale=0.5, size=weight.shape).astype(np.float32))
    source = random_ids(rng, [7, 3, 1, 0, 5], 30, pre_pad=True)  # a row of padding only, too
    session = ort.InferenceSession(encoder_model(encoder, 17).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = ["memory", "mask", "final_h", "final_c"]
    got = dict(zip(names, session.run(names, {"source_ids": source}), strict=True))
    want = dict(zip(names, (np.asarray(t, np.float32) for t in encoder.encode(source)), strict=True))
    for name in names:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
    assert np.all(got["memory"][3] == 0) and np.all(got["final_h"][3] == 0)


def test_onnx_encoder_needs_opset_13():
    from keras_attn import Encoder
    from pipelines.onnx_encoder import encoder_model

    encoder = Encoder(vocab_size=30, embedding_dim=8, units=6)
    encoder.build((None, None))
    with pytest.raises(ValueError, match="opset 12: the encoder graph needs opset 13"):
        encoder_model(encoder, 12)


def test_inference_greedy_equals_a_step_by_step_keras_loop(tf_side, held_out, dates_run):
    model, inference, translator = tf_side
    rows = translator.encode(held_out.sources[:20])
    source = pre_pad(rows)
    graph_ids = inference.translate_ids(source, 16)["ids"].numpy()
    # Plain Keras: re-run the teacher-forcing model on the growing prefix each step.
    prefix = np.full((len(rows), 1), model.config.bos_id, np.int32)
    for _ in range(graph_ids.shape[1]):
        logits = model({"source": source, "target_in": prefix}).numpy()
        prefix = np.concatenate([prefix, logits[:, -1].argmax(-1)[:, None].astype(np.int32)], 1)
    for row in range(len(rows)):
        assert strip_special(graph_ids[row]) == strip_special(prefix[row, 1:])


def test_onnx_greedy_and_beam_ids_equal_tensorflow_on_200_sentences(tf_side, held_out):
    _, inference, translator = tf_side
    rows = translator.encode(held_out.sources)
    for start in range(0, len(rows), 64):
        source = pre_pad(rows[start:start + 64])
        for beam in (1, 3):
            onnx_out = translator.decode_ids(source, beam, 20, 0.6, n_best=True)
            tf_out = inference.translate_ids(source, 20, beam, 0.6)
            np.testing.assert_array_equal(onnx_out["ids"], tf_out["ids"].numpy())
            np.testing.assert_allclose(onnx_out["log_probs"], tf_out["log_probs"].numpy(), rtol=1e-4, atol=1e-4)
            if beam > 1:  # the whole final beam
                np.testing.assert_array_equal(onnx_out["n_best_ids"], tf_out["n_best_ids"].numpy())
                np.testing.assert_allclose(onnx_out["n_best_log_probs"], tf_out["n_best_log_probs"].numpy(),
                                           rtol=1e-4, atol=1e-4)


def test_beam_search_returns_its_final_beam_ranked_and_scored(tf_side, held_out):
    """`n_best_*`: the first is `ids`; every hypothesis' log-prob is the model's own
    (teacher-forced) score of it; ranked by log-prob over the length penalty; distinct."""
    model, inference, translator = tf_side
    source, alpha, k, eos = pre_pad(translator.encode(held_out.sources[:16])), 0.6, 4, model.config.eos_id
    out = {name: value.numpy() for name, value in inference.translate_ids(source, 20, k, alpha).items()}
    n_best, scores = out["n_best_ids"], out["n_best_log_probs"]
    assert n_best.shape[:2] == scores.shape == (16, k)
    np.testing.assert_array_equal(n_best[:, 0], out["ids"])
    np.testing.assert_array_equal(scores[:, 0], out["log_probs"])
    lengths = np.array([[list(h).index(eos) + 1 if eos in h else np.count_nonzero(h) for h in row] for row in n_best])
    for j in range(k):
        target_in = np.concatenate([np.full((16, 1), model.config.bos_id, np.int32), n_best[:, j, :-1]], 1)
        logits = model({"source": source, "target_in": target_in}).numpy().astype("float64")
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        for row in range(16):
            steps = np.arange(lengths[row, j])
            assert log_probs[row, steps, n_best[row, j, steps]].sum() == pytest.approx(scores[row, j], abs=1e-3)
    ranking = scores / ((5.0 + lengths) / 6.0) ** alpha
    assert np.all(np.diff(ranking, axis=1) <= 1e-5)
    assert all(len({tuple(h) for h in row}) == k for row in n_best)


def test_beam_one_equals_greedy_and_beam_is_never_worse(tf_side, held_out):
    _, inference, translator = tf_side
    source = pre_pad(translator.encode(held_out.sources[:64]))
    greedy = inference.translate_ids(source, 20)
    beam1 = inference.translate_ids(source, 20, beam_size=1)
    np.testing.assert_array_equal(greedy["ids"].numpy(), beam1["ids"].numpy())
    beam4 = inference.translate_ids(source, 20, beam_size=4, alpha=0.0)
    assert np.all(beam4["log_probs"].numpy() >= greedy["log_probs"].numpy() - 1e-4)


def test_a_beam_search_holds_the_steps_it_takes_not_its_max_len(tf_side, held_out):
    """The beam histories grow with the steps taken: a cap of 2**31 - 1 gives what a
    cap of 20 gives when every output ends before 20 (histories allocated at the cap,
    onnxruntime failed to allocate 40 GiB; a cap of 10**8 filled all 24 GiB of RAM)."""
    _, inference, translator = tf_side
    source = pre_pad(translator.encode(held_out.sources[:8]))
    want = translator.decode_ids(source, 3, 20, 0.6, n_best=True)
    assert all(translator.eos_id in row for row in want["ids"])  # no output reached the cap of 20
    got = translator.decode_ids(source, 3, INT32_MAX, 0.6, n_best=True)
    for name in ("ids", "n_best_ids"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ("attention", "log_probs", "n_best_log_probs"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)
    tf_got = inference.translate_ids(source, INT32_MAX, 3, 0.6)
    np.testing.assert_array_equal(tf_got["n_best_ids"].numpy(), want["n_best_ids"])


@pytest.mark.parametrize("beam", [1, 3])
def test_search_of_a_batch_equals_each_sentence_searched_alone(beam):
    """A sentence leaves the search when it has finished (beam: all its hypotheses) or
    reached its own output cap; the others leaving (or not) must not change its
    result, in TensorFlow or in the ONNX graph. An untrained model's outputs end at
    different steps (dates all end at the same one), some only at their cap."""
    import keras
    import onnxruntime as ort

    from keras_attn import Seq2Seq
    from pipelines.export import convert
    from tests.helpers import random_ids, tiny_config

    lengths = [3, 9, 5, 12, 1, 7, 10, 4, 6, 8]
    caps = np.array([n + 4 for n in lengths], np.int32)  # one output cap per sentence
    source = random_ids(np.random.default_rng(4), lengths, 30, pre_pad=True)
    for seed in range(10):  # an initialization whose outputs end at several different steps
        keras.utils.set_random_seed(seed)
        model = Seq2Seq(tiny_config(tgt_vocab_size=12))
        model.build()
        inference = InferenceModel(model, fold_embeddings=True)
        eos = model.config.eos_id
        ids = inference.translate_ids(source, caps, beam, 0.6)["ids"].numpy()
        if len({list(row).index(eos) if eos in row else None for row in ids}) > 2:
            break
    search_function = inference.greedy_from_encoding if beam == 1 else inference.beam_search_from_encoding
    proto = convert(search_function, model.encoder, 17)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["ids", "attention", "log_probs"]

    def onnx_search(source, caps):
        feeds = {"source_ids": source, "max_len": caps}
        if beam > 1:
            feeds.update(beam_size=np.array(beam, np.int32), alpha=np.array(0.6, np.float32))
        return dict(zip(names, session.run(names, feeds), strict=True))

    def tf_search(source, caps):
        return {k: v.numpy() for k, v in inference.translate_ids(source, caps, beam, 0.6).items()}

    for search in (tf_search, onnx_search):
        batch = search(source, caps)
        ends = {list(ids).index(eos) if eos in ids else None for ids in batch["ids"]}
        assert len(ends) > 2, "the sentences must end at different steps for the test to mean anything"
        # Some sentence must stop at its cap while others go on (else caps are not tested).
        width = batch["ids"].shape[1]
        assert any(eos not in ids[:cap - 1] and cap < width for ids, cap in zip(batch["ids"], caps))
        for i, n in enumerate(lengths):
            alone = search(source[i:i + 1, -n:], caps[i:i + 1])
            steps = alone["ids"].shape[1]
            n_out = list(alone["ids"][0]).index(eos) + 1 if eos in alone["ids"][0] else steps
            np.testing.assert_array_equal(batch["ids"][i, :steps], alone["ids"][0])
            assert not batch["ids"][i, steps:].any()
            np.testing.assert_allclose(batch["log_probs"][i], alone["log_probs"][0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(batch["attention"][i, :n_out, -n:], alone["attention"][0, :n_out], atol=1e-5)


def test_translator_translates_in_order_and_keeps_empty_lines(dates_bundle, held_out):
    translator = Translator.load(dates_bundle)
    sources = held_out.sources[:30]
    outputs = translator.translate(["", *sources[:10], "   ", *sources[10:]], batch_size=7)
    assert len(outputs) == 32 and outputs[0] == "" and outputs[11] == ""
    assert outputs[1:11] + outputs[12:] == translator.translate(sources)
    assert translator.translate([]) == []


def test_translator_n_best(dates_bundle, held_out, tmp_path):
    translator = Translator.load(dates_bundle)
    sources = held_out.sources[:20]
    ranked = translator.translate_n_best(["", *sources], 3, beam=4)
    assert len(ranked) == 21 and ranked[0] == [("", 0.0)] * 3 and all(len(r) == 3 for r in ranked)
    assert [r[0][0] for r in ranked[1:]] == translator.translate(sources, beam=4)
    assert all(len({text for text, _ in r}) == 3 for r in ranked[1:])  # dates detokenize one way each
    assert [r[0][0] for r in translator.translate_n_best(sources, 1)] == translator.translate(sources)  # greedy
    for n, beam, message in ((0, None, "n must be a positive integer"), (3, 2, "need a beam of at least 3")):
        with pytest.raises(ValueError, match=message):
            translator.translate_n_best(sources, n, beam=beam)
    # A bundle exported before the n-best outputs existed says to re-export it.
    import onnx

    old = copy_bundle(dates_bundle, tmp_path)
    graph = onnx.load(old / "model_beam.onnx")
    kept = [o for o in graph.graph.output if o.name not in N_BEST_OUTPUTS]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, old / "model_beam.onnx")
    config = json.loads((old / "config.json").read_text())
    config["graphs"]["model_beam.onnx"]["sha256"] = sha256(old / "model_beam.onnx")
    (old / "config.json").write_text(json.dumps(config))
    outdated = Translator.load(old)
    assert outdated.translate(sources[:3], beam=2) == translator.translate(sources[:3], beam=2)
    with pytest.raises(BundleError, match="no n-best outputs.*re-export"):
        outdated.translate_n_best(sources, 2)


def test_translate_command_n_best(dates_bundle, held_out, tmp_path, capsys):
    src, out = tmp_path / "in.txt", tmp_path / "out.tsv"
    src.write_text("\n".join([held_out.sources[0], "", held_out.sources[1]]) + "\n", encoding="utf-8")
    assert cli.main(["translate", str(dates_bundle), "--n-best", "2", "--input", str(src), "--output", str(out)]) == 0
    rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row[0] for row in rows] == ["1", "1", "2", "2", "3", "3"] and rows[2] == ["2", "0.0000", ""]
    best = Translator.load(dates_bundle).translate([held_out.sources[0], held_out.sources[1]], beam=2)
    assert [rows[0][2], rows[4][2]] == best and float(rows[0][1]) < 0
    assert cli.main(["translate", str(dates_bundle), "--n-best", "3", "--beam", "2", "--input", str(src)]) == 2
    assert "--n-best 3 needs --beam 3 or more" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_alpha_with_greedy_decoding_is_noted(dates_bundle, tmp_path, capsys, command):
    """`--alpha` without `--beam` was ignored silently."""
    src = tmp_path / "in.txt"
    src.write_text("25 June 2009\n", encoding="utf-8")
    files = ["--input", str(src)] if command == "translate" else ["--src", str(src), "--ref", str(src)]
    note = f"keras-attn {command}: note: --alpha has no effect with greedy decoding (--beam 1)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([command, str(dates_bundle), *files, "--alpha", "0.8"]) == 0
    assert capsys.readouterr().err.count(note) == 1
    assert not [w for w in caught if "no effect" in str(w.message)]  # the note, not the API's warning too
    assert cli.main([command, str(dates_bundle), *files, "--alpha", "0.8", "--beam", "2"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_alpha_with_greedy_decoding_warns_in_the_python_api(dates_bundle):
    """`translate(..., alpha=0.8)` without a beam was ignored silently; the warning
    points at the caller's line."""
    translator = Translator.load(dates_bundle)
    for call in (lambda: translator.translate(["25 June 2009"], alpha=0.8),
                 lambda: translator.translate_n_best(["25 June 2009"], 1, alpha=0.8)):
        with pytest.warns(UserWarning, match=r"has no effect with greedy decoding \(beam=1\)") as caught:
            call()
        assert [Path(w.filename).name for w in caught] == ["test_export.py"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither the bundle's alpha at beam 1 nor a given one at beam 2
        translator.translate(["25 June 2009"])
        translator.translate(["25 June 2009"], beam=2, alpha=0.8)


def test_batches_on_parallel_single_thread_sessions_equal_one_session(dates_bundle, held_out):
    sources = held_out.sources[:200]
    one_core = Translator.load(dates_bundle, threads=1)
    two_cores = Translator.load(dates_bundle, threads=2)
    single = one_core.translate_with_attention(sources, beam=1)
    for beam in (1, 2):
        expected = one_core.translate(sources, beam=beam, batch_size=16)  # 13 batches, one by one
        assert two_cores.translate(sources, beam=beam, batch_size=16) == expected  # 13 batches, 2 at a time
    assert one_core._worker_sessions is None and two_cores._worker_sessions is not None
    parallel = two_cores.translate_with_attention(sources, beam=1)
    assert [t.text for t in parallel] == [t.text for t in single]
    for a, b in zip(parallel, single, strict=True):
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)


def test_a_bundle_exported_over_a_loaded_one_leaves_its_translations_as_loaded(dates_run, dates_bundle,
                                                                              held_out, tmp_path):
    """The worker sessions (2 threads, several batches) open on first use, from the
    bundle's files: after a re-export into its folder they opened the new model, run
    with the tokenizers loaded before, so one `Translator` translated by another model
    depending on the batching. Now the batches run on the loaded sessions, with a warning."""
    bundle = tmp_path / "bundle"
    shutil.copytree(dates_bundle, bundle)
    translator = Translator.load(bundle, threads=2)
    sources = held_out.sources[:100]
    loaded = translator.translate(sources, batch_size=len(sources))  # one batch: the loaded sessions
    export(dates_run[0], bundle, log=lambda *a: None)
    with pytest.warns(UserWarning, match="the bundle changed on disk since it was loaded") as caught:
        assert translator.translate(sources, batch_size=16) == loaded  # 7 batches
    assert len(caught) == 1 and caught[0].filename == __file__ and translator._worker_sessions is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        assert translator.translate(sources, batch_size=16) == loaded


def test_translator_caps_each_sentence_by_its_own_length(dates_bundle):
    """The graphs stop each sentence at its own cap (the search test above); the
    Translator must give each sentence the cap of its own length, not of the batch's
    longest, or a runaway output would depend on its neighbours."""
    translator = Translator.load(dates_bundle, threads=1)
    session, fed = translator.sessions["greedy"], []

    class Recorder:
        def run(self, names, feeds):
            fed.append(feeds)
            return session.run(names, feeds)

    translator.sessions = {**translator.sessions, "greedy": Recorder()}
    sentences = ["2009", "Donnerstag, 25. Juni 2009, am Nachmittag, um drei Uhr"]
    lengths = [len(ids) for ids in translator.encode(sentences)]
    translator.translate(sentences)
    caps = {int(c) for c in fed[0]["max_len"]}
    assert caps == {min(translator.max_tgt_len, 2 * n + 10) for n in lengths} and len(caps) == 2
    translator.translate(sentences, max_len=7)
    assert fed[1]["max_len"].tolist() == [7, 7]


def test_translate_with_attention_rows_sum_to_one(dates_bundle):
    result = Translator.load(dates_bundle).translate_with_attention(["Donnerstag, 25. Juni 2009"])[0]
    assert result.attention.shape == (len(result.target_tokens), len(result.source_tokens))
    np.testing.assert_allclose(result.attention.sum(1), 1.0, atol=1e-5)


def test_runtime_never_imports_tensorflow(dates_bundle):
    code = ("import sys; from keras_attn.runtime import Translator; "
            f"t = Translator.load({str(dates_bundle)!r}); print(t.translate(['25 June 2009'])[0]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'tensorflow imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# pyproject's `train` extra, by the module each package installs
TRAIN_EXTRA_MODULES = {"tensorflow": "tensorflow", "keras": "keras", "tensorflow-text": "tensorflow_text",
                       "tf2onnx": "tf2onnx", "onnx": "onnx", "sacrebleu": "sacrebleu", "babel": "babel",
                       "matplotlib": "matplotlib", "tensorboard": "tensorboard", "pyyaml": "yaml"}


def test_a_deployment_installs_no_training_package():
    import re
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    names = lambda requirements: {re.split(r"[<>=\[ ]", r)[0] for r in requirements}  # noqa: E731
    assert names(project["dependencies"]) == {"onnxruntime", "sentencepiece", "numpy"}
    assert names(project["optional-dependencies"]["train"]) == set(TRAIN_EXTRA_MODULES)
    assert set(cli.TRAINING_MODULES) == set(TRAIN_EXTRA_MODULES.values())


def test_translate_runs_without_the_training_packages_and_the_rest_say_what_to_install(dates_bundle, tmp_path):
    """The CLI with every module of the `train` extra unimportable, as after `pip install keras-attn`."""
    (tmp_path / "in.txt").write_text("25 June 2009\n")
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {sorted(TRAIN_EXTRA_MODULES.values())!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pipelines import cli\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    commands = {
        "translate": ["translate", str(dates_bundle), "--input", str(tmp_path / "in.txt")],
        "train": ["train", "--epochs", "1", "--out", str(tmp_path / "run")],
        "evaluate": ["evaluate", str(dates_bundle), "--src", str(tmp_path / "in.txt"), "--ref",
                     str(tmp_path / "in.txt")],
        "attention": ["attention", str(dates_bundle), "25 June 2009", "--png", str(tmp_path / "a.png")],
        "tune-alpha": ["tune-alpha", str(dates_bundle), "--src", str(tmp_path / "in.txt"), "--ref",
                       str(tmp_path / "in.txt")],
    }
    results = {name: subprocess.run([sys.executable, "-c", blocker, *argv], capture_output=True, text=True,
                                    timeout=120) for name, argv in commands.items()}
    assert results["translate"].returncode == 0, results["translate"].stderr
    assert results["translate"].stdout == "2009-06-25\n"
    for name in ("train", "evaluate", "attention", "tune-alpha"):
        assert results[name].returncode == 2, results[name].stderr
        assert results[name].stderr.startswith(f"keras-attn {name}: error: needs the training packages")
        assert "pip install 'keras-attn[train]'" in results[name].stderr


def test_int8_graph_runs_and_mostly_agrees(dates_bundle, held_out):
    fp32 = Translator.load(dates_bundle).translate(held_out.sources[:100])
    int8 = Translator.load(dates_bundle, int8=True).translate(held_out.sources[:100])
    assert len(int8) == 100
    assert sum(a == b for a, b in zip(fp32, int8)) >= 80


def copy_bundle(dates_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(dates_bundle, target)
    return target


def test_bundle_errors_are_clear(dates_bundle, tmp_path):
    bundle = copy_bundle(dates_bundle, tmp_path)
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:1000])
    with pytest.raises(BundleError, match="model.onnx: checksum does not match"):
        Translator.load(bundle)
    shutil.copy(dates_bundle / "model.onnx", bundle / "model.onnx")
    shutil.copy(bundle / "src.spm.model", bundle / "tgt.spm.model")
    with pytest.raises(BundleError, match="tgt.spm.model: does not match config.json"):
        Translator.load(bundle)
    shutil.copy(dates_bundle / "tgt.spm.model", bundle / "tgt.spm.model")
    with open(bundle / "weights.bin", "r+b") as weights:  # one byte changed
        first = weights.read(1)
        weights.seek(0)
        weights.write(bytes([first[0] ^ 1]))
    with pytest.raises(BundleError, match="weights.bin: checksum does not match"):
        Translator.load(bundle)
    (bundle / "weights.bin").unlink()
    with pytest.raises(BundleError, match="missing weights.bin"):
        Translator.load(bundle)
    Translator.load(bundle, int8=True)  # the int8 graphs have their own weights file
    (bundle / "model_beam.onnx").unlink()
    with pytest.raises(BundleError, match="missing model_beam.onnx"):
        Translator.load(bundle)
    with pytest.raises(BundleError, match="not found"):
        Translator.load(tmp_path / "nothing")


def test_a_bundle_of_another_format_or_a_bad_config_is_refused(dates_bundle, tmp_path):
    bundle = copy_bundle(dates_bundle, tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "format": 1}))
    with pytest.raises(BundleError, match="config.json: bundle format 1, this runtime reads format 2"):
        Translator.load(bundle)
    tokenizers = {**config["tokenizers"], "tgt": {**config["tokenizers"]["tgt"], "vocab_size": 7}}
    (bundle / "config.json").write_text(json.dumps({**config, "tokenizers": tokenizers}))
    with pytest.raises(BundleError, match="tgt.spm.model vocabulary does not match config.json"):
        Translator.load(bundle)
    (bundle / "config.json").write_text(json.dumps(config))
    (bundle / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match="missing model.int8.onnx .export with --quantize int8."):
        Translator.load(bundle, int8=True)
    (bundle / "config.json").write_bytes(b'{"format": 2,')
    with pytest.raises(BundleError, match="config.json: not valid JSON"):
        Translator.load(bundle)


@pytest.mark.parametrize("edit,message", [
    (lambda c: [c], "expected a JSON object, got list"),
    (lambda c: {k: v for k, v in c.items() if k != "tokenizers"}, "tokenizers must be an object, got None"),
    (lambda c: {**c, "max_src_len": "sixty"}, "max_src_len must be an integer, got 'sixty'"),
    (lambda c: {**c, "alpha": None}, "alpha must be a number >= 0, got None"),
    (lambda c: {**c, "alpha": float("nan")}, "alpha must be a number >= 0, got nan"),
    # each was an AttributeError or a TypeError, without the file (found by fuzzing config.json)
    (lambda c: {**c, "weights": None}, "weights must be an object, got None"),
    (lambda c: {**c, "tokenizers": {**c["tokenizers"], "src": 5}},
     "tokenizers.src must be an object with a sha256 string and an integer vocab_size, got 5"),
    (lambda c: {**c, "tokenizers": {**c["tokenizers"], "tgt": {**c["tokenizers"]["tgt"], "vocab_size": "16"}}},
     "tokenizers.tgt must be an object with a sha256 string and an integer vocab_size, got {"),
    (lambda c: {**c, "graphs": {**c["graphs"], "model.onnx": None}},
     "graphs.model.onnx must be an object whose sha256 is a string, got None"),
    (lambda c: {**c, "weights": {**c["weights"], "weights.bin": {"sha256": 7}}},
     "weights.weights.bin must be an object whose sha256 is a string, got {'sha256': 7}"),
])
def test_a_damaged_config_is_a_bundle_error_naming_the_key(dates_bundle, tmp_path, capsys, edit, message):
    bundle = copy_bundle(dates_bundle, tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps(edit(config)))
    with pytest.raises(BundleError, match=f"config.json: {message}"):
        Translator.load(bundle)
    assert cli.main(["evaluate", str(bundle), "--src", str(bundle / "config.json"),
                     "--ref", str(bundle / "config.json")]) == 2  # evaluate reads it the same way
    assert f"config.json: {message}" in capsys.readouterr().err


def test_truncated_graph_without_checksum_still_fails_at_load(dates_bundle, tmp_path):
    bundle = copy_bundle(dates_bundle, tmp_path)
    config = json.loads((bundle / "config.json").read_text())
    config["graphs"] = {}
    (bundle / "config.json").write_text(json.dumps(config))
    (bundle / "model.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        Translator.load(bundle)


def test_the_commands_do_not_print_tensorflows_c_log_errors_that_are_none(dates_run, tmp_path):
    """Without a GPU, `export` printed "E0000 ... failed call to cuInit: ... CUDA error" and
    "E0000 ... oneDNN supports DT_BOOL only on platforms with AVX-512" (on a CPU with
    AVX-512): TensorFlow's C++ log at the level the commands set, which they now set to
    fatal errors only. (The tests set it for themselves: the command runs without.)"""
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "export", str(dates_run[0]), "--out",
                           str(tmp_path / "bundle")], capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert not [line for line in done.stderr.splitlines() if line.startswith("E0000")]


def test_failed_export_leaves_nothing_behind(dates_run, tmp_path, monkeypatch):
    import pipelines.export as export_module

    def mismatch(*args, **kwargs):
        raise ExportError("greedy ONNX output differs from TensorFlow")

    monkeypatch.setattr(export_module, "check_parity", mismatch)
    with pytest.raises(ExportError):
        export(dates_run[0], tmp_path / "out", log=lambda *a: None)
    assert list(tmp_path.iterdir()) == []


RACING_EXPORTS = """
import multiprocessing, sys, tempfile
from pathlib import Path
from pipelines.export import replace_dir

def export(name, root, together, rounds):
    for _ in range(rounds):
        staging = Path(tempfile.mkdtemp(prefix=".bundle.", dir=root))
        (staging / "config.json").write_text(name)
        together.wait()  # both swaps start at once
        try:
            replace_dir(staging, Path(root) / "bundle")
        except OSError as error:
            print(name, error, flush=True)
        together.wait()

context = multiprocessing.get_context("fork")
together = context.Barrier(2, timeout=60)  # a partner that died breaks it instead of hanging
exports = [context.Process(target=export, args=(name, sys.argv[1], together, int(sys.argv[2]))) for name in "AB"]
for process in exports:
    process.start()
for process in exports:
    process.join()
sys.exit(any(process.exitcode for process in exports))  # an export that died fails the script
"""


def test_two_exports_finishing_at_once_into_one_folder_both_succeed(tmp_path):
    """Two exports to one --out that reach their final swap at the same instant: one's
    bundle replaces the other's, neither fails (without the lock, 89 of 300 such rounds failed
    with "Directory not empty" or "No such file or directory"), and no staging or old
    bundle is left beside it."""
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "config.json").write_text("before")
    done = subprocess.run([sys.executable, "-c", RACING_EXPORTS, str(tmp_path), "100"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout == "", done.stdout[-2000:] + done.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert (tmp_path / "bundle" / "config.json").read_text() in {"A", "B"}


def test_a_folder_that_cannot_be_locked_runs_the_block_unguarded_and_its_errors_plain(tmp_path):
    from keras_attn.files import folder_locked

    ran = []
    with pytest.raises(ValueError) as raised, folder_locked(tmp_path / "missing"):
        ran.append(True)
        raise ValueError("from the block")
    assert ran == [True] and raised.value.__context__ is None  # not "during handling of" the open's error


def test_export_replaces_only_an_empty_folder_or_an_earlier_bundle(dates_run, tmp_path, capsys):
    """The export replaces its folder whole: a folder of other files (the training
    folder, `.`) is refused, untouched, before any conversion; an earlier bundle is replaced."""
    others = tmp_path / "notes"
    others.mkdir()
    (others / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for out, message in ((others, "holds files and is not an export bundle"),
                         (dates_run[0], "holds files and is not an export bundle"),
                         (tmp_path / "file", "is a file, not an export folder")):
        before = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text()
        assert cli.main(["export", str(dates_run[0]), "--out", str(out)]) == 2
        assert f"{out}: {message}" in capsys.readouterr().err
        assert before == (sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_text())
    # under a file: FileExistsError from the staging folder's mkdir, a traceback with status 1
    assert cli.main(["export", str(dates_run[0]), "--out", str(tmp_path / "file" / "sub")]) == 2
    assert f"{tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err
    earlier = tmp_path / "bundle"
    earlier.mkdir()
    (earlier / "config.json").write_text('{"format": 1}')
    (earlier / "model.onnx").write_text("an earlier export's graph")
    export(dates_run[0], earlier, log=lambda *a: None)
    assert json.loads((earlier / "config.json").read_text())["format"] == BUNDLE_FORMAT
    (tmp_path / "empty").mkdir()
    assert Translator.load(earlier).translate(["25 June 2009"]) == Translator.load(
        export(dates_run[0], tmp_path / "empty", log=lambda *a: None)).translate(["25 June 2009"])


@pytest.mark.parametrize("opset", [13, 15, None])  # None: one past the newest tf2onnx converts
def test_export_refuses_an_opset_it_cannot_write_before_converting(dates_run, tmp_path, capsys, opset):
    """13-15 failed in the ONNX checker after a conversion (TensorScatterAdd needs 16),
    as a traceback; one past tf2onnx's newest (18 in 1.17) failed inside tf2onnx."""
    from tf2onnx import constants

    newest = max(constants.OPSET_TO_IR_VERSION)
    opset = opset or newest + 1
    assert cli.main(["export", str(dates_run[0]), "--out", str(tmp_path / "b"), "--opset", str(opset)]) == 2
    out, err = capsys.readouterr()
    assert f"opset {opset}: the graphs need an ONNX opset from 16 to {newest}" in err
    assert "[export] converting" not in out and not (tmp_path / "b").exists()


@pytest.mark.parametrize("beam", [0, 4097])
def test_export_refuses_a_beam_it_cannot_check_before_converting(dates_run, tmp_path, beam):
    """The Python API's `beam` was refused by the parity check, after both conversions."""
    logged = []
    with pytest.raises(ValueError, match=f"beam must be a positive integer up to 4096, got {beam}"):
        export(dates_run[0], tmp_path / "b", beam=beam, log=logged.append)
    assert logged == [] and not (tmp_path / "b").exists()


def test_export_to_a_link_replaces_the_linked_bundle_and_keeps_the_link(dates_run, tmp_path):
    """`--out current` with `current -> v1`: the rename replaced the link with a folder
    and left `.current.old-PID` linking to v1."""
    earlier = tmp_path / "v1"
    earlier.mkdir()
    (earlier / "config.json").write_text('{"format": 1}')
    (tmp_path / "current").symlink_to("v1")
    export(dates_run[0], tmp_path / "current", log=lambda *a: None)
    assert (tmp_path / "current").is_symlink() and (tmp_path / "current").resolve() == earlier.resolve()
    assert json.loads((earlier / "config.json").read_text())["format"] == BUNDLE_FORMAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]


def test_translate_and_attention_commands(dates_bundle, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("25 June 2009\n\n2009년 6월 25일\n", encoding="utf-8")
    assert cli.main(["translate", str(dates_bundle), "--input", str(src), "--output", str(tmp_path / "o.txt")]) == 0
    lines = (tmp_path / "o.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[1] == ""
    png = tmp_path / "a.png"
    assert cli.main(["attention", str(dates_bundle), "25 June 2009", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["translate", str(dates_bundle), "--input", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err


def test_the_attention_command_says_in_one_line_when_it_cut_the_sentence(dates_bundle, tmp_path, capsys):
    """It showed a raw TruncationWarning: the path and line of translate.py, and the code."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["attention", str(dates_bundle), "25 June 2009 " * 80, "--png", str(tmp_path / "a.png")]) == 0
    assert not [w for w in caught if issubclass(w.category, TruncationWarning)]
    limit = Translator.load(dates_bundle).max_src_len
    assert (f"the sentence is longer than {limit} source tokens: translated and plotted from its first {limit}"
            in capsys.readouterr().err)


def test_translate_line_buffered_answers_a_program_that_waits(dates_bundle, capsys):
    """A program that writes a line into a pipe and waits for its translation waited
    forever: lines not from a terminal were read 8 x --batch-size at a time."""
    import select

    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "translate", str(dates_bundle),
                                "--line-buffered"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
    answers = []
    for line in ["25 June 2009", "Sat 1 Jan 2000"]:
        process.stdin.write(line + "\n")
        process.stdin.flush()  # and the pipe stays open
        ready, _, _ = select.select([process.stdout], [], [], 60)
        answers.append(process.stdout.readline() if ready else None)
    process.stdin.close()
    assert process.wait(timeout=60) == 0 and answers == ["2009-06-25\n", "2000-01-01\n"]
    assert cli.main(["translate", str(dates_bundle), "--line-buffered", "--output", "o.txt"]) == 2
    assert "--line-buffered answers stdin on stdout; it takes no --input or --output" in capsys.readouterr().err


def test_translate_from_a_terminal_answers_each_line_as_it_is_typed(dates_bundle, monkeypatch, capsys):
    import io

    typed = [b"25 June 2009\n", b"\n", b"Sat 1 Jan 2000\n", b"\xff\n"]
    shown_before_each_read = []

    class Terminal(io.TextIOWrapper):
        def isatty(self):
            return True

    class Keyboard(io.BytesIO):
        def readline(self, *args):
            shown_before_each_read.append(capsys.readouterr().out)
            return typed.pop(0) if typed else b""

    monkeypatch.setattr(sys, "stdin", Terminal(Keyboard()))
    assert cli.main(["translate", str(dates_bundle)]) == 2
    assert shown_before_each_read == ["", "2009-06-25\n", "\n", "2000-01-01\n"]
    assert "<stdin>:4: invalid UTF-8" in capsys.readouterr().err
    typed[:], shown_before_each_read[:] = [b"25 June 2009\n", b"Sat 1 Jan 2000\n"], []
    assert cli.main(["translate", str(dates_bundle), "--n-best", "2"]) == 0
    answers = [shown.splitlines() for shown in shown_before_each_read[1:]]
    assert [[line.split("\t")[0] for line in lines] for lines in answers] == [["1", "1"], ["2", "2"]]
    assert answers[0][0].endswith("\t2009-06-25") and answers[1][0].endswith("\t2000-01-01")


def test_translate_streams_its_input_in_chunks(dates_bundle, tmp_path, monkeypatch, capsys):
    """A chunk's translations (8 x --batch-size lines) are written before the next chunk
    is read, so a pipe gets output early; invalid UTF-8 in a later chunk names its line,
    and --output then leaves no file behind."""
    import io

    written, lines_out = [], []  # the output so far; its line count each time an input line is read

    class Pipe(io.BytesIO):
        def __next__(self):
            written.append(capsys.readouterr().out)
            lines_out.append("".join(written).count("\n"))
            return super().__next__()

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(Pipe(b"25 June 2009\n" * 20)))
    assert cli.main(["translate", str(dates_bundle), "--batch-size", "1"]) == 0
    written.append(capsys.readouterr().out)
    assert lines_out[:9] == [0] * 8 + [8] and lines_out[16] == 16
    assert "".join(written) == "2009-06-25\n" * 20
    bad = tmp_path / "in.txt"
    bad.write_bytes(b"25 June 2009\n" * 12 + b"\xff\n" + b"25 June 2009\n" * 7)
    out = tmp_path / "out.txt"
    assert cli.main(["translate", str(dates_bundle), "--batch-size", "1", "--input", str(bad),
                     "--output", str(out)]) == 2
    assert f"{bad}:13: invalid UTF-8" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [bad]  # neither the output nor its temporary file


def test_translate_names_the_input_lines_it_truncates(dates_bundle, tmp_path, capsys):
    """A line longer than the model's source limit is translated from its first pieces,
    and stderr names its file and line, counted across chunks (8 x --batch-size lines)."""
    lines = ["25 June 2009"] * 13
    lines[2] = lines[10] = lines[12] = "25 June 2009 " * 200
    source, out = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    assert cli.main(["translate", str(dates_bundle), "--batch-size", "1", "--input", str(source),
                     "--output", str(out)]) == 0
    limit = Translator.load(dates_bundle).max_src_len
    reports = [line for line in capsys.readouterr().err.splitlines() if "longer than" in line]
    assert reports == [f"{source}: line(s) {numbers} longer than {limit} source tokens, translated from their "
                       f"first {limit}" for numbers in ["3", "11, 13"]]
    assert len(out.read_text(encoding="utf-8").splitlines()) == 13


def test_truncation_report_shows_the_first_lines_and_counts_the_rest(capsys):
    """Truncations raised in a `collecting_truncations` block are collected, not shown,
    while other warnings pass on; a report names at most `SHOWN_LINES` lines (a long
    file cut everywhere would print thousands) and returns them all."""
    from pipelines.translate import SHOWN_LINES, collecting_truncations, report_truncation

    with pytest.warns(UserWarning) as shown:
        with collecting_truncations() as cut:
            warnings.warn(TruncationWarning("cut", list(range(SHOWN_LINES))), stacklevel=1)
            warnings.warn(UserWarning("something else"), stacklevel=1)
            warnings.warn(TruncationWarning("cut", list(range(SHOWN_LINES, SHOWN_LINES + 5))), stacklevel=1)
    assert [str(w.message) for w in shown] == ["something else"] and cut == list(range(SHOWN_LINES + 5))
    lines = report_truncation(cut, "in.txt", 101, 50)
    assert lines == list(range(101, 101 + SHOWN_LINES + 5))
    listed = ", ".join(str(n) for n in range(101, 101 + SHOWN_LINES))
    assert capsys.readouterr().err == (f"in.txt: line(s) {listed} and 5 more longer than 50 source tokens, "
                                       "translated from their first 50\n")
    assert report_truncation([], "in.txt", 1, 50) == [] and capsys.readouterr().err == ""
    with pytest.warns(UserWarning, match="before the error"), pytest.raises(ValueError):
        with collecting_truncations():
            warnings.warn(UserWarning("before the error"), stacklevel=1)
            raise ValueError("the block fails")


def test_translate_keeps_one_output_line_per_input_line(dates_bundle, tmp_path, monkeypatch, capsys):
    """Only line feeds end a line: U+2028, form feed and a CR before the LF stay inside
    it (`str.splitlines` would split them into extra lines); `.gz` and stdin work, and
    `--alpha` reaches the beam search."""
    import gzip
    import io

    lines = ["25 June 2009", "3\u2028May 1999", "7 July\x0c2001", "12 March 2010\r"]
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    gz = tmp_path / "in.txt.gz"
    gz.write_bytes(gzip.compress(data))
    alphas = []
    translate = Translator.translate

    def recording(self, sentences, **kwargs):
        alphas.append(kwargs.get("alpha"))
        return translate(self, sentences, **kwargs)

    monkeypatch.setattr(Translator, "translate", recording)
    out = tmp_path / "o.txt"
    assert cli.main(["translate", str(dates_bundle), "--input", str(gz), "--output", str(out),
                     "--beam", "2", "--alpha", "0.9"]) == 0
    from_file = out.read_text(encoding="utf-8").split("\n")
    assert len(from_file) == len(lines) + 1 and from_file[-1] == "" and alphas == [0.9]
    assert from_file[0] == "2009-06-25"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    assert cli.main(["translate", str(dates_bundle), "--beam", "2"]) == 0
    assert capsys.readouterr().out.split("\n") == from_file and alphas == [0.9, None]


def test_evaluate_command_reports_bleu_chrf_and_speed(dates_bundle, held_out, tmp_path, capsys):
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("\n".join(held_out.sources[:50]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(held_out.targets[:50]) + "\n", encoding="utf-8")
    report_path = tmp_path / "report.json"
    assert cli.main(["evaluate", str(dates_bundle), "--src", str(src), "--ref", str(ref),
                     "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    hyps = Translator.load(dates_bundle).translate(held_out.sources[:50])
    import sacrebleu

    assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [held_out.targets[:50]]).score, abs=0.01)
    assert report["exact_match"] == sum(h == r for h, r in zip(hyps, held_out.targets[:50])) / 50
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in report["bleu_signature"]
    assert report["chrf_signature"].startswith("nrefs:1") and report["sentences_per_second"] > 0
    # Target tokens are the model's pieces (characters for the dates demo), not words.
    tgt_sp = spm.SentencePieceProcessor(model_file=str(dates_bundle / "tgt.spm.model"))
    assert report["target_tokens"] == sum(len(tgt_sp.encode(h)) for h in hyps) >= 10 * len(hyps)
    printed = capsys.readouterr().out
    assert "| bleu |" in printed and f"| target_tokens_per_second | {report['target_tokens_per_second']} |" in printed
    assert report["alpha"] is None  # greedy: no length penalty
    # Beam: the bundle's alpha unless --alpha is given; the report says which was used.
    for flags, alpha in (([], json.loads((dates_bundle / "config.json").read_text())["alpha"]),
                         (["--alpha", "1.5"], 1.5)):
        assert cli.main(["evaluate", str(dates_bundle), "--src", str(src), "--ref", str(ref), "--beam", "2",
                         "--json", str(report_path), *flags]) == 0
        report = json.loads(report_path.read_text())
        hyps = Translator.load(dates_bundle).translate(held_out.sources[:50], beam=2, alpha=alpha)
        assert report["alpha"] == alpha
        assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [held_out.targets[:50]]).score, abs=0.01)
    ref.write_text("only one line\n")
    assert cli.main(["evaluate", str(dates_bundle), "--src", str(src), "--ref", str(ref)]) == 2
    assert f"misaligned files: {src} has 50 lines but {ref} has 1" in capsys.readouterr().err
    src.write_text("")
    ref.write_text("")
    for command in ("evaluate", "tune-alpha"):  # an IndexError inside sacreBLEU before
        assert cli.main([command, str(dates_bundle), "--src", str(src), "--ref", str(ref)]) == 2
        assert f"{src}: no lines to score (the file is empty)" in capsys.readouterr().err


def test_tune_alpha_scores_each_alpha_and_writes_the_best_into_the_bundle(dates_bundle, held_out, tmp_path,
                                                                          capsys):
    """tune-alpha's BLEU for each alpha is evaluate's at that alpha; --write makes the
    best the bundle's default, which translate then uses, and the bundle still loads."""
    bundle = copy_bundle(dates_bundle, tmp_path)
    src, ref, table = tmp_path / "val.src", tmp_path / "val.ref", tmp_path / "tune.json"
    # deliberately short of a perfect score, so that the alphas can differ
    src.write_text("\n".join(held_out.sources[:60]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(t[:-1] for t in held_out.targets[:60]) + "\n", encoding="utf-8")
    alphas = ["0", "0.5", "2"]
    assert cli.main(["tune-alpha", str(bundle), "--src", str(src), "--ref", str(ref), "--beam", "2",
                     "--alphas", *alphas, "--json", str(table)]) == 0
    report = json.loads(table.read_text())
    expected = [evaluate(bundle, src, ref, beam=2, alpha=float(a))[0]["bleu"] for a in alphas]
    assert [row["bleu"] for row in report["rows"]] == expected
    best = [float(a) for a in alphas][expected.index(max(expected))]
    assert report["best_alpha"] == best and f"best alpha {best}" in capsys.readouterr().out
    assert json.loads((bundle / "config.json").read_text())["alpha"] == 0.6  # unchanged without --write
    assert cli.main(["tune-alpha", str(bundle), "--src", str(src), "--ref", str(ref), "--beam", "2",
                     "--alphas", *alphas, "--write"]) == 0
    config = json.loads((bundle / "config.json").read_text())
    assert config["alpha"] == best and config["alpha_tuned_on"] == {"src": str(src), "beam": 2, "bleu": max(expected)}
    assert evaluate(bundle, src, ref, beam=2)[0]["alpha"] == best  # the bundle's default now
    assert Translator.load(bundle).translate(held_out.sources[:5], beam=2) == Translator.load(
        dates_bundle).translate(held_out.sources[:5], beam=2, alpha=best)
    for bad in (["--alphas", "-1"], ["--alphas", "inf"], ["--beam", "0"]):
        with pytest.raises(SystemExit):
            cli.main(["tune-alpha", str(bundle), "--src", str(src), "--ref", str(ref), *bad])
        assert "expected" in capsys.readouterr().err


def test_tune_alpha_refuses_beam_1_before_translating(dates_bundle, held_out):
    rows = []
    with pytest.raises(ValueError, match="--beam 1: the length penalty"):
        tune_alpha(Translator.load(dates_bundle), held_out.sources[:3], held_out.targets[:3], beam=1,
                   progress=rows.append)
    assert rows == []


def test_tune_alpha_names_the_lines_it_cuts_once(dates_bundle, held_out, tmp_path, capsys):
    """A validation line longer than the source limit is named once by file and line,
    not once per alpha, as `evaluate` and `translate` name theirs."""
    sources = list(held_out.sources[:6])
    sources[4] = "25 June 2009 " * 200
    src, ref = tmp_path / "val.src", tmp_path / "val.ref"
    src.write_text("\n".join(sources) + "\n", encoding="utf-8")
    ref.write_text("\n".join(held_out.targets[:6]) + "\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)  # none escapes as a Python warning
        assert cli.main(["tune-alpha", str(dates_bundle), "--src", str(src), "--ref", str(ref), "--beam", "2",
                         "--alphas", "0", "1"]) == 0
    limit = Translator.load(dates_bundle).max_src_len
    reports = [line for line in capsys.readouterr().err.splitlines() if "longer than" in line]
    assert reports == [f"{src}: line(s) 5 longer than {limit} source tokens, translated from their first {limit}"]


def test_evaluate_with_the_tf_runtime_scores_what_onnx_scores(dates_run, dates_bundle, held_out, tmp_path, capsys):
    """`--runtime tf` decodes with the training folder's Keras model: same hypotheses as
    the bundle's graphs, so the same scores, also for lines with control characters and
    lines cut to the source limit, which both name by file and line; flags a runtime
    would ignore are refused."""
    sources = list(held_out.sources[:40])
    sources[3] = sources[3].replace(" ", "\x00", 1)  # each is a space to the runtime
    sources[5] = "\x1b" + sources[5].replace(" ", "\u00ad")
    sources[7] = sources[9] = "25 June 2009 " * 200
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("\n".join(sources) + "\n", encoding="utf-8")
    ref.write_text("\n".join(held_out.targets[:40]) + "\n", encoding="utf-8")
    limit = json.loads((dates_bundle / "config.json").read_text())["max_src_len"]
    reports = {}
    for runtime, extra in (("onnx", []), ("tf", ["--train-dir", str(dates_run[0])])):
        report_path = tmp_path / f"{runtime}.json"
        assert cli.main(["evaluate", str(dates_bundle), "--src", str(src), "--ref", str(ref), "--beam", "2",
                         "--runtime", runtime, *extra, "--json", str(report_path)]) == 0
        reports[runtime] = json.loads(report_path.read_text())
        assert reports[runtime]["truncated_lines"] == [8, 10]
        assert (f"{src}: line(s) 8, 10 longer than {limit} source tokens, translated from their first {limit}"
                in capsys.readouterr().err)
    for key in ("bleu", "chrf", "exact_match", "target_tokens"):
        assert reports["tf"][key] == reports["onnx"][key]
    hypotheses = {runtime: evaluate(dates_bundle, src, ref, runtime=runtime, train_dir=train_dir)[1]
                  for runtime, train_dir in (("onnx", None), ("tf", dates_run[0]))}
    assert hypotheses["tf"] == hypotheses["onnx"]
    assert hypotheses["onnx"][3] == Translator.load(dates_bundle).translate([held_out.sources[3]])[0]
    assert reports["tf"]["runtime"] == "tf" and reports["tf"]["alpha"] == reports["onnx"]["alpha"]
    other = tmp_path / "other_run"
    shutil.copytree(dates_run[0], other)
    shutil.copy(other / "src.spm.model", other / "tgt.spm.model")
    capsys.readouterr()
    for flags, message in ((["--runtime", "tf"], "needs --train-dir"),
                           (["--runtime", "tf", "--train-dir", str(dates_run[0]), "--int8"], "--int8 is for"),
                           (["--train-dir", str(dates_run[0])], "--train-dir is for --runtime tf"),
                           (["--runtime", "tf", "--train-dir", str(other)], "tgt.spm.model: not the tokenizer of")):
        assert cli.main(["evaluate", str(dates_bundle), "--src", str(src), "--ref", str(ref), *flags]) == 2
        assert message in capsys.readouterr().err


def test_demo_command_trains_exports_and_translates(tmp_path, capsys):
    """The README main command's path, shortened to one epoch on 2,000 pairs."""
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert cli.main(["demo", "--out", str(run), "--bundle", str(bundle), "--epochs", "1", "--pairs", "2000"]) == 0
    out = capsys.readouterr().out
    assert "[onnxruntime] translations by the exported model" in out
    assert out.count(" -> ") == len(cli.DEMO_DATES)
    # The arrows line up on a terminal, where the Korean date's characters are two columns wide.
    arrows = {sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line.split(" -> ")[0])
              for line in out.splitlines() if " -> " in line}
    assert arrows == {34}
    assert (run / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert (bundle / "model.int8.onnx").is_file() and json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "config.json").read_text())["train"]["dates_train_size"] == 2000
