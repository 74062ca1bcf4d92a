import collections
import datetime
import functools
import gzip
import http.server
import os
import threading
import urllib.request

import pytest

from pipelines.corpus import (
    CorpusError,
    download_multi30k,
    line_chunks,
    load_multi30k,
    read_lines,
    read_parallel,
    read_tsv,
)
from pipelines.dates import date_corpus
from tests.helpers import run_with_file_size_limit


def write(path, text, gz=False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_reads_plain_and_gzip_and_drops_empty_pairs_with_a_count(tmp_path):
    src = write(tmp_path / "a.de.gz", "Hallo\n  \nWelt\nja\n", gz=True)
    tgt = write(tmp_path / "a.en", "hello\nblank\nworld\n\t\n")
    corpus = read_parallel(src, tgt)
    assert corpus.sources == ["Hallo", "Welt"] and corpus.targets == ["hello", "world"]
    assert corpus.dropped_empty == 2
    assert "2 empty or whitespace-only pairs dropped" in corpus.describe()


def test_pairs_are_normalized_as_the_runtime_normalizes_its_inputs(tmp_path):
    """Control characters become spaces as in `Translator` (so training sees what
    translation will); a side left with nothing but them is empty, and its pair dropped."""
    src = write(tmp_path / "a.de", "Hallo\x00Welt\nHunde\xadh\u00fctte\n\x1b\x00\nja\n")
    tgt = write(tmp_path / "a.en", "hello world\ndoghouse\nescape\n\u2028yes\x85\n")
    corpus = read_parallel(src, tgt)
    assert corpus.sources == ["Hallo Welt", "Hunde h\u00fctte", "ja"]
    assert corpus.targets == ["hello world", "doghouse", "yes"] and corpus.dropped_empty == 1


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    src = write(tmp_path / "s.txt", "a\nb\nc\n")
    tgt = write(tmp_path / "t.txt", "x\ny\n")
    with pytest.raises(CorpusError) as error:
        read_parallel(src, tgt)
    message = str(error.value)
    assert str(src) in message and str(tgt) in message and "3 lines" in message and "has 2" in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.txt", b"fine\nalso fine\nbroken \xff here\n")
    with pytest.raises(CorpusError, match=r"bad\.txt:3: invalid UTF-8"):
        read_lines(bad)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.txt: no such file"):
        read_lines(tmp_path / "nope.txt")


def test_a_folder_is_named_as_a_folder(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(CorpusError, match=r"data: is a folder, not a file"):  # was "no such file"
        read_lines(tmp_path / "data")


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_pipe_is_read_gzipped_or_not(tmp_path, gzipped):
    """`--src <(zcat f.gz)` (a pipe, no name to tell gzip by, no size): refused as "no
    such file" before; gzip is now told by its first bytes, and no fraction is given."""
    text = "eins\nzwei\n" * 3000
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(
        gzip.compress(text.encode()) if gzipped else text.encode()), daemon=True)  # never blocks the exit
    writer.start()
    chunks = list(line_chunks(fifo, 1000))
    writer.join()
    assert [line for _, lines, _ in chunks for line in lines] == text.splitlines()
    assert [first for first, _, _ in chunks] == list(range(1, 6001, 1000))
    assert {fraction for _, _, fraction in chunks} == {None}


def test_tsv_reader_and_its_errors(tmp_path):
    good = write(tmp_path / "p.tsv", "eins\tone\nzwei\ttwo\n")
    assert read_tsv(good).targets == ["one", "two"]
    bad = write(tmp_path / "q.tsv", "eins\tone\nzwei two\n")
    with pytest.raises(CorpusError, match=r"q\.tsv:2: expected 2 tab-separated fields, found 1"):
        read_tsv(bad)


def test_multi30k_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(CorpusError, match="download-multi30k"):
        load_multi30k(tmp_path / "absent")


@pytest.fixture
def loopback_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_multi30k_download_against_a_loopback_server(tmp_path, loopback_server):
    root, url = loopback_server
    for split in ("train", "val", "test_2016_flickr"):
        write(root / f"{split}.de.gz", f"{split} de eins\n{split} de zwei\n", gz=True)
        write(root / f"{split}.en.gz", f"{split} en one\n{split} en two\n", gz=True)
    dest = tmp_path / "multi30k"
    written = download_multi30k(dest, base_url=url, timeout=5)
    assert len(written) == 6
    splits = load_multi30k(dest)
    assert splits["val"].sources == ["val de eins", "val de zwei"]
    assert download_multi30k(dest, base_url=url, timeout=5) == []  # nothing fetched twice


def test_failed_download_leaves_no_partial_file(tmp_path, loopback_server):
    root, url = loopback_server
    write(root / "train.de.gz", b"this is not gzip")
    dest = tmp_path / "multi30k"
    with pytest.raises(CorpusError, match="train.de.gz"):
        download_multi30k(dest, base_url=url, timeout=5)
    assert list(dest.iterdir()) == []


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupted(url, timeout):
        raise KeyboardInterrupt  # Ctrl-C while the first file downloads

    monkeypatch.setattr(urllib.request, "urlopen", interrupted)
    dest = tmp_path / "multi30k"
    with pytest.raises(KeyboardInterrupt):
        download_multi30k(dest, base_url="http://127.0.0.1:9", timeout=5)
    assert list(dest.iterdir()) == []


def test_a_full_disk_while_downloading_says_which_file_and_leaves_none(tmp_path, loopback_server):
    """A write that found no room said "download of URL failed", with status 2 (bad
    input), where every other command names the file it could not write, status 1."""
    root, url = loopback_server
    write(root / "train.de.gz", os.urandom(20_000).hex() + "\n", gz=True)  # ~22 KB, past the limit
    dest = tmp_path / "multi30k"
    done = run_with_file_size_limit(["download-multi30k", dest, "--base-url", url], 10, tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines() == [f"keras-attn download-multi30k: error: cannot write {dest}/train.de.gz: "
                                        "File too large"]
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("dest", ["file", "file/multi30k"])
def test_a_download_into_a_file_is_refused_by_name(tmp_path, dest):
    """A FileExistsError traceback from mkdir, with status 1 from the command."""
    (tmp_path / "file").write_text("mine")
    with pytest.raises(CorpusError, match=f"{tmp_path / dest}: {tmp_path / 'file'} is a file, not a folder"):
        download_multi30k(tmp_path / dest, base_url="http://127.0.0.1:9", timeout=5)
    assert (tmp_path / "file").read_text() == "mine"


def test_date_corpus_is_deterministic_multilingual_and_unambiguous():
    a, b = date_corpus(3000, seed=7), date_corpus(3000, seed=7)
    assert a.sources == b.sources and a.targets == b.targets
    assert date_corpus(50, seed=8).sources != a.sources[:50]
    for iso in a.targets:
        assert 1950 <= datetime.date.fromisoformat(iso).year <= 2049
    text = " ".join(a.sources)
    for marker in ("년", "Juni", "juin", "junio", "June"):  # ko, de, fr, es, en
        assert marker in text or marker.lower() in text
    meanings = collections.defaultdict(set)
    for src, tgt in zip(date_corpus(20000, seed=3).sources, date_corpus(20000, seed=3).targets):
        meanings[src].add(tgt)
    assert all(len(targets) == 1 for targets in meanings.values())
