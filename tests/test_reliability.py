"""Dirty input, fuzzing, concurrency, distribution and safe loading."""

import json
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_attn.runtime import Translator, TruncationWarning
from keras_attn.saving import load_model
from pipelines import cli
from tests.helpers import run_with_file_size_limit

DIRTY = ["", "   \t ", "25 June\x00 2009\x07", "🎉 25 June 2009 🎉", "\U000e0001\U0010fffd", "2009年6月25日 Juni 25",
         "\u200b\u202e25.06.09", ("25 June 2009 " * 800)[:10_000], "Donnerstag, 25. Juni 2009"]


@pytest.fixture(scope="module")
def translator(dates_bundle):
    return Translator.load(dates_bundle)


def test_dirty_batch_gives_one_output_per_input(translator):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = translator.translate(DIRTY)
    assert len(outputs) == len(DIRTY)
    assert outputs[0] == "" and outputs[1] == ""
    assert all(isinstance(o, str) for o in outputs)
    # the 10,000-character line is truncated with exactly one warning, which says where it is
    truncation = [w for w in caught if "truncated" in str(w.message)]
    assert len(truncation) == 1 and "1 input(s)" in str(truncation[0].message)
    assert truncation[0].category is TruncationWarning and truncation[0].message.positions == [7]
    assert "positions 7 in the list" in str(truncation[0].message)
    assert truncation[0].filename == __file__  # points at the caller, not inside the Translator
    with pytest.warns(TruncationWarning) as direct:
        translator.encode(DIRTY)
    assert direct[0].filename == __file__  # encode's own caller too


def test_control_characters_do_not_change_the_translation(translator):
    clean, dirty = translator.translate(["25 June 2009", "25 June\x00 2009\x07"])
    assert clean == dirty


def test_long_line_alone_is_truncated_not_an_error(translator):
    with pytest.warns(UserWarning, match="truncated"):
        assert len(translator.translate(["7 " * 5000])) == 1


@pytest.mark.parametrize("beam,max_len", [(0, None), (-1, None), (1.5, None), (True, None), (1, 0), (1, True),
                                          (2**31, None), (4097, None), (1, 2**31), (1, 2**32 + 3)])
def test_bad_beam_or_max_len_raise_value_errors(translator, beam, max_len):
    # Beyond the graphs' int32 inputs: beam 2**31 raised numpy's OverflowError, max_len 2**32 + 3 wrapped to 3.
    with pytest.raises(ValueError, match="must be a positive integer"):
        translator.translate(["25 June 2009"], beam=beam, max_len=max_len)


def test_a_wide_beam_translates_fewer_sentences_at_a_time(translator, monkeypatch):
    """A batch holds at most MAX_BEAM hypotheses: 64 sentences at beam 4,096 in one batch
    failed in onnxruntime's allocator at 17.3 GB with the Multi30k model. The
    translations are the ones each sentence gets alone."""
    from keras_attn.config import MAX_BEAM

    sentences = ["25 June 2009", "1. März 1999", "2009년 6월 25일", "lunes 3 de mayo de 1999", "6/25/09"]
    alone = [translator.translate([s], beam=1500)[0] for s in sentences]
    rows, decode_ids = [], translator.decode_ids
    monkeypatch.setattr(translator, "decode_ids", lambda ids, *a: rows.append(len(ids)) or decode_ids(ids, *a))
    assert translator.translate(sentences, beam=1500) == alone
    assert sorted(rows) == [1, 2, 2] and MAX_BEAM // 1500 == 2  # batches run two at a time: any order
    rows.clear()
    translator.translate(sentences, beam=5, batch_size=4)
    assert sorted(rows) == [1, 4]  # a narrow beam keeps the batch size asked for


@pytest.mark.parametrize("source_ids,problem", [
    (np.zeros((0, 4), np.int32), "2-D integer array"),  # crashed the process (segmentation fault)
    (np.zeros((2, 0), np.int32), "2-D integer array"),  # onnxruntime: a Mod node failed
    (np.array([5, 6], np.int32), "2-D integer array"),  # numpy's AxisError
    (np.array([[5.7, 6.2]]), "2-D integer array"),  # cut to [[5, 6]] silently
    (np.array([[5, -1]]), "ids from 0 to"),  # read as the vocabulary's last id, silently
    (np.array([[5, 10**6]]), "ids from 0 to"),  # onnxruntime: a Gather node failed
])
def test_decode_ids_refuses_a_batch_the_graphs_cannot_take(translator, source_ids, problem):
    with pytest.raises(ValueError, match=f"source_ids must be .*{problem}"):
        translator.decode_ids(source_ids)


@pytest.mark.parametrize("beam,max_len", [(0, None), (2**31, None), (1, 0), (1, 2**32 + 3)])
def test_decode_ids_checks_beam_and_max_len(translator, beam, max_len):
    source_ids = np.array(translator.encode(["25 June 2009"]))
    with pytest.raises(ValueError, match="must be a positive integer"):
        translator.decode_ids(source_ids, beam=beam, max_len=max_len)


@pytest.mark.parametrize("int8", [False, True])
def test_a_translator_pickles_as_its_bundle_and_settings(dates_bundle, int8):
    """For `multiprocessing` workers started by spawn; onnxruntime sessions cannot be
    pickled (a TypeError before)."""
    import pickle

    sources = ["25 June 2009", "Donnerstag, 25. Juni 2009"]
    original = Translator.load(dates_bundle, int8=int8, threads=1)
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.bundle, copy.graphs, copy.threads) == (original.bundle, original.graphs, 1)
    assert copy.translate(sources, beam=2) == original.translate(sources, beam=2)


def test_largest_max_len_is_accepted(translator):
    sources = ["25 June 2009", "Donnerstag, 25. Juni 2009"]
    assert translator.translate(sources, max_len=2**31 - 1) == translator.translate(sources, max_len=50)


@pytest.mark.parametrize("threads", [-1, 2.5, "2", True])
def test_bad_thread_count_is_a_value_error(dates_bundle, threads):
    # -1 loaded (onnxruntime took it); 2.5 and "2" were reported as a bundle onnxruntime cannot load.
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Translator.load(dates_bundle, threads=threads)


@pytest.mark.parametrize("value", ["abc", "-1", "0", "1.5"])
def test_bad_threads_variable_is_named(dates_bundle, monkeypatch, value):
    monkeypatch.setenv("KERAS_ATTN_THREADS", value)
    with pytest.raises(ValueError, match=f"KERAS_ATTN_THREADS must be a positive integer, got '{value}'"):
        Translator.load(dates_bundle)


def test_threads_variable_sets_the_sessions_threads(dates_bundle, monkeypatch):
    monkeypatch.setenv("KERAS_ATTN_THREADS", " 1 ")
    assert Translator.load(dates_bundle).threads == 1
    assert Translator.load(dates_bundle, threads=2).threads == 2  # the argument comes first


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size_raises_a_value_error(translator, batch_size):  # -1 gave empty translations
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        translator.translate(["25 June 2009", "1 May 1999"], batch_size=batch_size)


@pytest.mark.parametrize("alpha", [-0.5, float("nan"), float("inf"), "0.6"])
def test_bad_alpha_raises_a_value_error(translator, alpha):
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        translator.translate(["25 June 2009"], beam=2, alpha=alpha)


def test_non_string_input_is_a_type_error(translator):
    with pytest.raises(TypeError):
        translator.translate("25 June 2009")
    with pytest.raises(TypeError, match="sentences must be str"):
        translator.translate([b"bytes"])


def test_version_is_the_installed_packages(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"keras-attn {importlib.metadata.version('keras-attn')}\n"


@pytest.mark.parametrize("argv,message", [
    (["translate", "{b}", "--beam", "0"], "expected a positive integer"),
    (["translate", "{b}", "--max-len", "-3"], "expected a positive integer"),
    (["translate", "{b}", "--beam", "4097"], "expected at most 4096"),  # wider beams ran out of memory
    (["translate", "{b}", "--n-best", "4097"], "expected at most 4096"),
    (["translate", "{d}/no-bundle"], "export bundle folder not found"),
    # an output that cannot be written is refused before the translation, not after it
    (["translate", "{b}", "--input", "{d}/in.txt", "--output", "{d}/nowhere/o.txt"],
     "--output {d}/nowhere/o.txt: folder {d}/nowhere does not exist"),
    (["translate", "{b}", "--input", "{d}/in.txt", "--output", "{d}"], "--output {d}: is a folder, not a file"),
    (["translate", "{b}", "--input", "{d}"], "{d}: is a folder, not a file"),  # was "no such input file"
    # every alpha gave the greedy output, and --write made the first one the bundle's
    (["tune-alpha", "{b}", "--src", "{d}/in.txt", "--ref", "{d}/in.txt", "--beam", "1", "--write"],
     "--beam 1: the length penalty ranks a beam's hypotheses and greedy decoding has none"),
    # the demo's export replaces --bundle whole: refused before the training, not after it
    (["demo", "--out", "{d}/x", "--bundle", "{d}/x"], "--bundle {d}/x: holds the training folder --out {d}/x,"),
    (["demo", "--out", "{d}/x/run", "--bundle", "{d}/x"], "--bundle {d}/x: holds the training folder --out"),
    (["demo", "--out", "{d}-run", "--bundle", "{d}"], "{d}: holds files and is not an export bundle"),
    (["evaluate", "{b}", "--src", "{d}/in.txt", "--ref", "{d}/in.txt", "--json", "{d}/in.txt/r.json"],
     "--json {d}/in.txt/r.json: {d}/in.txt is a file, not a folder"),  # was "folder ... does not exist"
    (["attention", "{b}", "25 June 2009", "--png", "{d}/nowhere/a.png"], "--png {d}/nowhere/a.png: folder"),
    (["evaluate", "{b}", "--src", "{d}/in.txt", "--ref", "{d}/in.txt", "--json", "{d}/nowhere/r.json"],
     "--json {d}/nowhere/r.json: folder"),
])
def test_cli_bad_values_exit_2(dates_bundle, tmp_path, capsys, argv, message):
    (tmp_path / "in.txt").write_text("25 June 2009\n")
    argv = [a.format(b=dates_bundle, d=tmp_path) for a in argv]
    message = message.format(d=tmp_path)
    try:
        status = cli.main(argv)
    except SystemExit as exit_info:  # argparse rejects before our handler runs
        status = exit_info.code
    out, err = capsys.readouterr()
    assert status == 2 and message in err and "Traceback" not in err
    assert out == ""  # refused before any work: tune-alpha --beam 1 printed its table's header first


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, whose writes fail with ENOSPC")
@pytest.mark.parametrize("argv", [
    ["translate", "{b}", "--input", "{d}/in.txt", "--output", "/dev/full"],
    ["evaluate", "{b}", "--src", "{d}/in.txt", "--ref", "{d}/in.txt", "--json", "/dev/full"],
    ["attention", "{b}", "25 June 2009", "--png", "/dev/full"],
], ids=["translate", "evaluate", "attention"])
def test_a_full_disk_is_one_line_naming_the_file_and_status_1(dates_bundle, tmp_path, capsys, argv):
    """A write that finds no room was a traceback (OSError: [Errno 28] ...)."""
    (tmp_path / "in.txt").write_text("25 June 2009\n")
    status = cli.main([a.format(b=dates_bundle, d=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert status == 1
    assert err.splitlines()[-1] == f"keras-attn {argv[0]}: error: cannot write /dev/full: No space left on device"
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, named", [
    (["train", "--out", "/sys/keras-attn/run"], "--out /sys/keras-attn/run"),
    (["demo", "--out", "{d}/run", "--bundle", "/sys/keras-attn/bundle"], "/sys/keras-attn/bundle"),
    (["translate", "{b}", "--input", "{d}/in.txt", "--output", "/sys/o.txt"], "--output /sys/o.txt"),
    (["download-multi30k", "/sys/keras-attn/multi30k"], "/sys/keras-attn/multi30k"),
], ids=["train", "demo", "translate", "download"])
def test_an_output_where_the_system_refuses_to_write_is_refused_before_the_work(dates_bundle, tmp_path, capsys,
                                                                                argv, named):
    """An output in a folder the user may not write (here /sys, which refuses even root)
    was refused when its first file was written: `train` after its data preparation,
    `demo` after its training and `translate` after translating. Each now tries to write
    there first, and leaves nothing."""
    (tmp_path / "in.txt").write_text("25 June 2009\n")
    status = cli.main([a.format(b=dates_bundle, d=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert re.fullmatch(rf"keras-attn {argv[0]}: error: {named}: cannot write in /sys \(.+\)\n", err)
    assert not Path("/sys/keras-attn").exists() and list(tmp_path.iterdir()) == [tmp_path / "in.txt"]


def test_the_write_check_removes_what_it_made(tmp_path, monkeypatch):
    from keras_attn import files

    assert files.folder_problem(tmp_path / "a" / "b") is None
    assert list(tmp_path.iterdir()) == []

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "touch", refused)
    assert files.folder_problem(tmp_path / "a" / "b") == f"cannot write in {tmp_path / 'a' / 'b'} (Permission denied)"
    assert list(tmp_path.iterdir()) == []


def test_the_write_check_leaves_a_folder_another_process_made_meanwhile(tmp_path, monkeypatch):
    """Two runs started together into one new --out: the second's mkdir found the
    first's folder, and the check said "cannot write in … (File exists)"."""
    from keras_attn import files

    mkdir = Path.mkdir

    def racing(path, *args, **kwargs):
        if path == tmp_path / "a":
            mkdir(path)  # the other process, first
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing)
    assert files.folder_problem(tmp_path / "a" / "b") is None
    assert list(tmp_path.rglob("*")) == [tmp_path / "a"]  # its folder stays; the check's own is removed


def test_the_write_check_tries_again_when_another_process_removes_the_folder_it_found(tmp_path, monkeypatch):
    """The two workers of a multi-worker run check --out and --out/worker_1 together: the
    chief's check made --out, the worker's found it made, and the chief's removed it
    before the worker's mkdir of worker_1: "cannot write in … (No such file or directory)",
    status 2."""
    from keras_attn import files

    mkdir, raced = Path.mkdir, []

    def racing(path, *args, **kwargs):
        if not raced and path == tmp_path / "a":
            mkdir(path)  # the other process's check makes it first …
        elif not raced and path == tmp_path / "a" / "b":
            (tmp_path / "a").rmdir()  # … and removes it as it ends
            raced.append(path)
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing)
    assert files.folder_problem(tmp_path / "a" / "b") is None
    assert raced and list(tmp_path.iterdir()) == []


def test_a_folder_removed_while_it_is_checked_is_not_called_a_file(tmp_path, monkeypatch):
    """The same race one step earlier: the check saw --out exist, the other process's
    check removed it, and the test for a folder then said "--out is a file, not a folder"."""
    from keras_attn import files

    (tmp_path / "a").mkdir()  # made by the other process's check …
    stat, removed = Path.stat, []

    def removed_after_it_is_seen(path, **kwargs):
        result = stat(path, **kwargs)
        if path == tmp_path / "a" and not removed:
            path.rmdir()  # … which removes it as it ends, just after this check saw it
            removed.append(path)
        return result

    monkeypatch.setattr(Path, "stat", removed_after_it_is_seen)
    assert files.folder_problem(tmp_path / "a" / "b") is None
    assert removed and list(tmp_path.iterdir()) == []


def test_a_write_refused_in_its_folder_names_the_file_asked_for(tmp_path, monkeypatch):
    """`--output` in a folder the user may not write named the hidden temporary file:
    "[Errno 13] Permission denied: '/sys/.o.txt.tmp'". Other errors are left as they are."""
    import errno

    from keras_attn import files

    target = tmp_path / "o.txt"

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def missing(path, *args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(files, "open", refused, raising=False)
    with pytest.raises(PermissionError) as caught, files.atomic_output(target):
        pass
    assert caught.value.filename == str(target)
    with pytest.raises(PermissionError) as caught:
        files.atomic_save(refused, target)  # a writer such as Keras's model.save
    assert caught.value.filename == str(target)
    monkeypatch.setattr(files, "open", missing, raising=False)
    with pytest.raises(FileNotFoundError) as caught, files.atomic_output(target):
        pass
    assert Path(caught.value.filename).parent == tmp_path and caught.value.filename != str(target)
    assert list(tmp_path.iterdir()) == []


def test_two_commands_writing_one_output_each_write_a_whole_file(dates_bundle, tmp_path):
    """Two translations given the same --output shared one temporary file: the first to
    finish published a mix of both (12,288 of 20,000 lines were the other's, by hand)
    and the second failed with "No such file or directory". Each now writes its own,
    and the output is one of the two whole."""
    (tmp_path / "a.txt").write_text("25 June 2009\n" * 20_000)
    (tmp_path / "b.txt").write_text("1 May 2000\n" * 20_000)
    processes = [subprocess.Popen([sys.executable, "-m", "pipelines.cli", "translate", str(dates_bundle), "--input",
                                   str(tmp_path / name), "--output", str(tmp_path / "out.txt")], stderr=subprocess.PIPE,
                                  text=True, cwd=Path(__file__).resolve().parents[1]) for name in ("a.txt", "b.txt")]
    assert [p.wait(timeout=300) for p in processes] == [0, 0], [p.stderr.read() for p in processes]
    assert set((tmp_path / "out.txt").read_text().splitlines()) in ({"2009-06-25"}, {"2000-05-01"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "out.txt"]


def test_a_full_disk_while_training_stops_with_one_line_and_leaves_no_partial_file(tmp_path):
    """Writing the backup's weights (HDF5) found no room. Keras left that file open, and
    the process died at exit with a segmentation fault (status 139), after a traceback
    naming a hidden temporary file."""
    out = tmp_path / "run"
    done = run_with_file_size_limit(["train", "--dates-train-size", "300", "--epochs", "1", "--embedding-dim", "32",
                                     "--encoder-units", "64", "--decoder-units", "128", "--out", out],
                                    1_000, tmp_path)  # the tokenizers (~250 KB each) fit, the weights do not
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (f"keras-attn train: error: cannot write {out}/backup/epoch_001.keras: "
                                            "File too large")
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_full_disk_while_exporting_or_translating_leaves_nothing(dates_run, dates_bundle, tmp_path):
    """The export's staging folder and the translation's temporary file are removed, and
    the message names --out and --output, not them."""
    (tmp_path / "in.txt").write_text("25 June 2009\n" * 2000)
    for argv, named in ((["export", dates_run[0], "--out", tmp_path / "bundle"], tmp_path / "bundle"),
                        (["translate", dates_bundle, "--input", tmp_path / "in.txt", "--output", tmp_path / "out.txt"],
                         tmp_path / "out.txt")):
        done = run_with_file_size_limit(argv, 10, tmp_path)
        assert done.returncode == 1, done.stderr[-2000:]
        assert done.stderr.splitlines()[-1] == f"keras-attn {argv[0]}: error: cannot write {named}: File too large"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_translate_output_to_a_link_or_a_pipe(dates_bundle, translator, tmp_path):
    """The output was written to a temporary file renamed over the path: a symbolic
    link became a regular file (its target untouched), and so did a FIFO (its reader
    got nothing)."""
    source = tmp_path / "in.txt"
    source.write_text("25 June 2009\n")
    want = translator.translate(["25 June 2009"])[0] + "\n"
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old\n")
    link.symlink_to(target)
    assert cli.main(["translate", str(dates_bundle), "--input", str(source), "--output", str(link)]) == 0
    assert link.is_symlink() and target.read_text() == want
    fifo, read = tmp_path / "fifo", []
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()), daemon=True)
    reader.start()
    assert cli.main(["translate", str(dates_bundle), "--input", str(source), "--output", str(fifo)]) == 0
    reader.join(timeout=30)
    assert read == [want] and fifo.is_fifo()


def test_translate_into_a_pipe_closed_early_stops_quietly(dates_bundle, tmp_path):
    """`keras-attn translate ... | head -1` printed a BrokenPipeError traceback."""
    source = tmp_path / "in.txt"
    # 330 KB of output, more than a pipe holds (64 KB): writes are still to come when it is closed
    source.write_text("25 June 2009\n" * 30_000)
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "translate", str(dates_bundle), "--input",
                                str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
    first = process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141 and first.strip() and err == ""


def test_sigterm_stops_a_command_with_its_clean_ups(dates_bundle, tmp_path):
    """`kill` (SIGTERM) ended the process at once: a translation's temporary output
    (and an export's staging folder) stayed behind. Now it is raised as Ctrl-C is."""
    import signal
    import time

    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("25 June 2009\n" * 300_000)
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "translate", str(dates_bundle), "--input",
                                str(source), "--output", str(output)], stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".tmp-*.out.txt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".tmp-*.out.txt"))  # the translation is under way
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert process.stderr.read().strip().endswith("keras-attn translate: terminated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def train_on_missing_files(tmp_path) -> list[str]:
    """A `keras-attn train` command that loads TensorFlow and then fails on its input."""
    return [sys.executable, "-m", "pipelines.cli", "train", "--corpus", "files", "--train-src",
            str(tmp_path / "missing.de"), "--train-tgt", str(tmp_path / "missing.en")]


def test_an_error_is_the_only_line_a_tensorflow_command_prints(tmp_path):
    """TensorFlow's libraries print INFO lines while they load ("oneDNN custom operations
    are on", "Could not find cuda drivers") that TF_CPP_MIN_LOG_LEVEL does not reach: a
    one-line error came after eight lines of them. Set to 0 by the user, they show."""
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    argv, root = train_on_missing_files(tmp_path), Path(__file__).resolve().parents[1]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=root)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"keras-attn train: error: {tmp_path / 'missing.de'}: no such file"]
    shown = subprocess.run(argv, capture_output=True, text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
                           timeout=120, cwd=root)
    assert shown.returncode == 2
    assert [line for line in shown.stderr.splitlines() if cli.ABSL_INFO_LINE.match(line)]


def test_a_tensorflow_command_runs_without_a_stderr(tmp_path):
    """A process started with its stderr closed (a daemon's child): the import's hold on
    stderr has none to hold, and the command runs as before (here, to its error)."""
    done = subprocess.run(train_on_missing_files(tmp_path), stdout=subprocess.PIPE, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1], preexec_fn=lambda: os.close(2))
    assert done.returncode == 2


def test_a_quiet_import_passes_on_everything_but_the_info_lines(tmp_path, monkeypatch, capfd):
    (tmp_path / "noisy_module.py").write_text(
        "import os\n"
        "os.write(2, b'" + cli.ABSL_NOTICE + "\\n')\n"
        "os.write(2, b'I0000 00:00:1796636532.104099    3581 port.cc:153] loaded\\n')\n"
        "os.write(2, b'W0000 00:00:1796636532.104100    3581 port.cc:160] a warning\\n')\n"
        "os.write(2, b'a line of its own\\n')\n"
        "os.write(2, b'I0000 00:00:1796636532.104101    3581 stub.cc:31] loaded too\\n')\n")
    (tmp_path / "failing_module.py").write_text("import os\nos.write(2, b'before the error\\n')\nraise ImportError('no')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    cli.import_quietly("noisy_module")
    assert capfd.readouterr().err == "W0000 00:00:1796636532.104100    3581 port.cc:160] a warning\na line of its own\n"
    with pytest.raises(ImportError, match="no"):
        cli.import_quietly("failing_module")
    os.write(2, b"stderr is back\n")
    assert capfd.readouterr().err == "before the error\nstderr is back\n"
    del sys.modules["noisy_module"]

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", no_room)
    cli.import_quietly("noisy_module")  # imported all the same, its lines as they are
    assert "noisy_module" in sys.modules and capfd.readouterr().err.count("loaded") == 2
    del sys.modules["noisy_module"]


def test_cli_invalid_utf8_input_names_the_line(dates_bundle, tmp_path, capsys):
    bad = tmp_path / "in.txt"
    bad.write_bytes(b"25 June 2009\n\xff\xfe\n")
    assert cli.main(["translate", str(dates_bundle), "--input", str(bad)]) == 2
    assert "in.txt:2: invalid UTF-8" in capsys.readouterr().err


@given(st.lists(st.text(max_size=40), max_size=4))  # examples: the hypothesis profile (1,000 by default)
def test_fuzz_translate_never_fails_and_is_deterministic(translator, sentences):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = translator.translate(sentences)
        second = translator.translate(sentences)
    assert len(first) == len(sentences) and first == second


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(DIRTY[2:7] + ["6/25/09", "2009년 6월 25일", "lunes 3 de mayo de 1999"]),
                min_size=1, max_size=6), st.integers(1, 4))
def test_fuzz_batch_neighbours_and_batch_size_never_change_a_translation(translator, sentences, batch_size):
    alone = [translator.translate([s])[0] for s in sentences]
    assert translator.translate(sentences, batch_size=batch_size) == alone


def test_one_translator_shared_by_8_threads(translator):
    rng = np.random.default_rng(0)
    pool = ["25 June 2009", "Donnerstag, 25. Juni 2009", "2009년 6월 25일", "6/25/09", "",
            "jeudi 25 juin 2009", "jueves, 25 de junio de 2009 " * 3]
    requests = [[pool[i] for i in rng.integers(0, len(pool), rng.integers(1, 5))] for _ in range(8 * 200)]
    expected = [translator.translate(r) for r in requests]
    results = [None] * len(requests)
    errors = []

    def worker(k):
        try:
            for i in range(k, len(requests), 8):
                results[i] = translator.translate(requests[i])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == expected


def test_loader_refuses_a_model_with_a_lambda_layer(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "evil.keras")
    with pytest.raises(ValueError, match="(?i)lambda|safe_mode"):
        load_model(tmp_path / "evil.keras")


# The same tiny model and data under any strategy: `fit_tiny(strategy)` returns its
# three epochs' losses. Each script makes its strategy first, as TensorFlow requires
# of a multi-worker one.
FIT_TINY = r'''
import keras, numpy as np
from keras_attn import Seq2Seq, Seq2SeqConfig
def fit_tiny(strategy):
    cfg = Seq2SeqConfig(30, 25, 16, 16, 1, True, 32, 1, "general", 0.0)
    rng = np.random.default_rng(0)
    x = {"source": rng.integers(4, 30, (64, 7)).astype("int32"),
         "target_in": rng.integers(4, 25, (64, 6)).astype("int32")}
    y = rng.integers(4, 25, (64, 6)).astype("int32")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = Seq2Seq(cfg)
        model.build()
        model.compile_for_training(learning_rate=1e-2)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(32), epochs=3, verbose=0)
    return history.history["loss"]
'''

MIRRORED = r'''
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
''' + FIT_TINY + r'''
losses = {}
for name in ("single", "mirrored"):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if name == "mirrored" else tf.distribute.get_strategy()
    losses[name] = fit_tiny(strategy)
    losses[name + "_replicas"] = strategy.num_replicas_in_sync
print(json.dumps(losses))
'''


def test_mirrored_strategy_on_two_cpu_devices_matches_single_device():
    result = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert losses["mirrored_replicas"] == 2 and losses["single_replicas"] == 1
    np.testing.assert_allclose(losses["mirrored"], losses["single"], rtol=2e-3)


MULTIWORKER = r'''
import json
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: collective ops are set up at startup
''' + FIT_TINY + r'''
print(json.dumps({"loss": fit_tiny(strategy), "replicas": strategy.num_replicas_in_sync}))
'''


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(argv: list[str], cwd, count: int = 2) -> list[subprocess.Popen]:
    """`argv` started as `count` workers of one MultiWorkerMirroredStrategy cluster on localhost."""
    import os

    hosts = [f"localhost:{port}" for port in free_ports(count)]
    return [subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
        **os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})})
        for i in range(count)]


def run_workers(argv: list[str], cwd, count: int = 2) -> list[subprocess.CompletedProcess]:
    """`start_workers`, then wait for all of them."""
    results = []
    for process in start_workers(argv, cwd, count):
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
    return results


def test_two_workers_train_as_one_device_does():
    """MultiWorkerMirroredStrategy across two processes: Keras 3 cannot reduce a dict
    of inputs nor its scalar logs across workers unless `Seq2Seq` works around it."""
    root = Path(__file__).resolve().parents[1]
    single = subprocess.run([sys.executable, "-c", MULTIWORKER], capture_output=True, text=True, timeout=300, cwd=root)
    assert single.returncode == 0, single.stderr[-2000:]
    reference = json.loads(single.stdout.strip().splitlines()[-1])
    for worker in run_workers([sys.executable, "-c", MULTIWORKER], root):
        assert worker.returncode == 0, worker.stderr[-2000:]
        result = json.loads(worker.stdout.strip().splitlines()[-1])
        assert result["replicas"] == 2 and reference["replicas"] == 1
        np.testing.assert_allclose(result["loss"], reference["loss"], rtol=2e-3)


def train_on_two_workers(out: Path, pairs: int, epochs: int) -> list[str]:
    """The `keras-attn train --strategy multiworker` command of a tiny dates model."""
    return [sys.executable, "-m", "pipelines.cli", "train", "--strategy", "multiworker", "--dates-train-size",
            str(pairs), "--epochs", str(epochs), "--embedding-dim", "8", "--encoder-units", "8", "--decoder-units",
            "16", "--verbose", "0", "--out", str(out)]


def workers_agree(out: Path) -> list[tuple[str, str]]:
    """The chief's (`out`) and worker 1's (`out/worker_1`) runs ended with the same
    history and weights; returns the history's (loss, val_loss) rows."""
    from pipelines.callbacks import read_history

    folders = [out, out / "worker_1"]
    histories = [[(row["loss"], row["val_loss"]) for row in read_history(f / "history.csv")] for f in folders]
    assert histories[0] == histories[1]
    chief, other = (load_model(f / "model.keras").get_weights() for f in folders)
    for a, b in zip(chief, other, strict=True):
        np.testing.assert_array_equal(a, b)
    return histories[0]


@pytest.mark.parametrize("tf_config,message", [
    ("not json", "Expecting value"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 5}}', "The `task_id` 5 exceeds"),
])
def test_a_bad_tf_config_is_named(tmp_path, tf_config, message):
    """TensorFlow's own message named neither TF_CONFIG nor the strategy."""
    import os

    result = subprocess.run(train_on_two_workers(tmp_path / "run", pairs=300, epochs=1), capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "TF_CONFIG": tf_config})
    assert result.returncode == 2
    assert f"--strategy multiworker: the TF_CONFIG variable: {message}" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_the_train_command_runs_on_two_workers(tmp_path):
    """`keras-attn train --strategy multiworker` (the strategy made before any other
    TensorFlow op), both hosts given the same `--out`: the chief writes there, the
    other worker in `worker_1/`, and both end with the same losses and weights."""
    out = tmp_path / "run"
    for worker in run_workers(train_on_two_workers(out, pairs=600, epochs=2), Path(__file__).resolve().parents[1]):
        assert worker.returncode == 0, worker.stderr[-2000:]
    histories = workers_agree(out)
    assert len(histories) == 2


def test_sigterm_stops_the_workers_and_the_same_command_resumes(tmp_path):
    """TensorFlow's multi-worker setup catches SIGTERM to note a preemption, which
    `fit` never reads: without `train.stop_on_sigterm` the workers train on to the end."""
    import signal
    import time

    from pipelines.callbacks import read_history

    out, root = tmp_path / "run", Path(__file__).resolve().parents[1]
    argv = train_on_two_workers(out, pairs=3000, epochs=4)
    workers, deadline = start_workers(argv, root), time.monotonic() + 240
    # Both workers' first rows: worker 1 ends an epoch a little after the chief, and a
    # kill between its backup and its row would (as documented) leave its row missing.
    logged = [out / "history.csv", out / "worker_1" / "history.csv"]
    while not all(map(read_history, logged)) and time.monotonic() < deadline and workers[0].poll() is None:
        time.sleep(0.05)
    for worker in workers:  # during the second epoch (~1 s at 3,000 pairs)
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.communicate(timeout=60)
        assert worker.returncode == -signal.SIGTERM
    first = read_history(out / "history.csv")
    assert 1 <= len(first) < 4
    for worker in run_workers(argv, root):  # the same command: each worker resumes from its backup
        assert worker.returncode == 0, worker.stderr[-2000:]
    histories = workers_agree(out)
    assert len(histories) == 4 and histories[:len(first)] == [(row["loss"], row["val_loss"]) for row in first]


KEEPING_BACKUPS = """
import sys
import pipelines.resume
import pipelines.train
from pipelines import cli
pipelines.resume.end_training = lambda out: None
pipelines.train.remove_backup = lambda out: None
sys.exit(cli.main(sys.argv[1:]))
"""


def test_workers_killed_between_their_backups_resume_from_the_epoch_before(tmp_path):
    """A kill at an epoch's end that fell after the chief's backup of epoch 2 and before
    worker 1's: resumed from their own backups, the chief trained nothing more and worker
    1 epoch 2, alone, until its next collective failed ("Socket closed")."""
    from pipelines.callbacks import read_history

    out, root = tmp_path / "run", Path(__file__).resolve().parents[1]
    argv = train_on_two_workers(out, pairs=600, epochs=2)
    for worker in run_workers([sys.executable, "-c", KEEPING_BACKUPS, *argv[3:]], root):  # backups left as at the end
        assert worker.returncode == 0, worker.stderr[-2000:]
    uninterrupted = workers_agree(out)
    behind = out / "worker_1"
    metadata = json.loads((behind / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2 and metadata["previous"]["epoch"] == 1  # multi-worker backups keep one more
    (behind / "backup" / "training_metadata.json").write_text(json.dumps(metadata["previous"]) + "\n")
    rows = (behind / "history.csv").read_text().splitlines(keepends=True)
    (behind / "history.csv").write_text("".join(rows[:2]))  # epoch 2's row comes after its backup
    for worker in run_workers(argv, root):
        assert worker.returncode == 0, worker.stderr[-2000:]
        assert "Traceback" not in worker.stderr and "WARNING" not in worker.stderr, worker.stderr[-2000:]
    assert workers_agree(out) == uninterrupted
    assert not (out / "backup").exists() and not (behind / "backup").exists()
    assert len(read_history(out / "history.csv")) == 2


def test_workers_whose_backups_cannot_resume_together_are_refused_before_any_write(tmp_path):
    """The chief killed after its training ended, worker 1 after its run was complete (its
    backup removed): worker 1 started a new run, which failed at its first collective
    with a traceback, after clearing its folder."""
    out = tmp_path / "run"
    (out / "backup").mkdir(parents=True)
    (out / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 2, "training_ended": True}))
    for worker in run_workers(train_on_two_workers(out, pairs=600, epochs=2), Path(__file__).resolve().parents[1]):
        assert worker.returncode == 2, worker.stderr[-2000:]
        assert worker.stderr.splitlines()[-1] == (
            "keras-attn train: error: the workers' backups do not agree (worker 0: training ended after 2 epochs; "
            "worker 1: no backup), so they cannot resume together; their folders keep what they have: delete each "
            "one's backup/ to start the run afresh")
    assert [p.name for p in out.rglob("*")] == ["backup", "training_metadata.json"]
