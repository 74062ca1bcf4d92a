"""Parallel corpora: aligned text files, TSV, Multi30k; strict validation.

Every reader returns a `ParallelCorpus`. Problems raise `CorpusError` with the file
(and line) at fault; empty pairs are dropped and counted, never silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import itertools
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

from keras_attn.files import NO_ROOM, folder_problem, input_file_problem, writing

GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip file


class CorpusError(ValueError):
    """Bad corpus input; the message names the file and line."""


@dataclasses.dataclass
class ParallelCorpus:
    """Aligned sentence pairs and what was dropped on the way in."""

    sources: list[str]
    targets: list[str]
    name: str = "corpus"
    dropped_empty: int = 0

    def __post_init__(self):
        if len(self.sources) != len(self.targets):
            raise CorpusError(f"{self.name}: {len(self.sources)} sources but {len(self.targets)} targets")

    def __len__(self):
        return len(self.sources)

    def head(self, n: int) -> ParallelCorpus:
        return ParallelCorpus(self.sources[:n], self.targets[:n], self.name, self.dropped_empty)

    def describe(self) -> str:
        text = f"{self.name}: {len(self):,} pair" + ("" if len(self) == 1 else "s")
        if self.dropped_empty:
            text += f" ({self.dropped_empty:,} empty or whitespace-only pairs dropped)"
        return text


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (`.gz` read transparently), without line ends.

    Raises `CorpusError` naming the file for a missing file, and the file and line
    number for invalid UTF-8.
    """
    return [line for _, lines, _ in line_chunks(path, 1 << 16) for line in lines]


def line_chunks(path: str | Path | None, size: int):
    """A UTF-8 text file, pipe or device (gzip read transparently), or stdin for `None`,
    read `size` lines at a time as they are needed: yields `(first line number, lines,
    fraction of the file read)` (the fraction is None for stdin and pipes, which have
    no size). Lines are split as `decode_lines`
    splits them; `CorpusError` names the file for a missing or unreadable file, and the
    file and line for invalid UTF-8."""
    check_input_file(path)
    name = "<stdin>" if path is None else str(path)
    with contextlib.ExitStack() as stack:
        if path is None:
            stream, raw_file, total = sys.stdin.buffer, None, None
        else:
            raw_file = stack.enter_context(open(path, "rb"))
            gzipped = Path(path).suffix == ".gz" or raw_file.peek(2)[:2] == GZIP_MAGIC  # a pipe has no name
            stream = stack.enter_context(gzip.open(raw_file)) if gzipped else raw_file
            # a pipe has no size, and cannot tell its place
            total = max(1, Path(path).stat().st_size) if Path(path).is_file() else None
        number = 1
        while True:
            try:
                raw = list(itertools.islice(stream, size))
            except (OSError, EOFError) as error:  # e.g. a damaged .gz
                raise CorpusError(f"{name}: cannot read ({error})") from error
            if not raw:
                return
            yield number, decode_lines(b"".join(raw), name, first_line=number), \
                None if total is None else raw_file.tell() / total
            number += len(raw)


def check_input_file(path: str | Path | None) -> None:
    """`CorpusError` naming `path` when it cannot be read as input (`None`, stdin, can)."""
    problem = None if path is None else input_file_problem(path)
    if problem:
        raise CorpusError(f"{path}: {problem}")


def decode_lines(data: bytes, name: str, first_line: int = 1) -> list[str]:
    """UTF-8 `data` split at line feeds only (not at the other characters
    `str.splitlines` breaks on, such as U+2028 or form feed, which can occur inside a
    sentence), each line without a trailing carriage return; `CorpusError` names
    `name` and the line (`data` starting at line `first_line`) for invalid UTF-8."""
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the newline that ends the last line
    lines = []
    for number, raw in enumerate(raw_lines, start=first_line):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            raise CorpusError(f"{name}:{number}: invalid UTF-8 at byte {error.start}") from None
    return lines


def pair_up(sources: list[str], targets: list[str], name: str) -> ParallelCorpus:
    """Both sides normalized as the runtime normalizes its inputs (`clean`: control
    characters to spaces, stripped), so that training sees what translation will;
    pairs where either side is then empty are dropped and counted."""
    # Imported here: the runtime module loads numpy, and the CLI's parser imports this one.
    from keras_attn.runtime.translator import clean

    kept_src, kept_tgt = [], []
    for src, tgt in zip(map(clean, sources), map(clean, targets)):
        if src and tgt:
            kept_src.append(src)
            kept_tgt.append(tgt)
    return ParallelCorpus(kept_src, kept_tgt, name, dropped_empty=len(sources) - len(kept_src))


def read_aligned(src_path: str | Path, tgt_path: str | Path, what: str = "corpus") -> tuple[list[str], list[str]]:
    """The lines of two files, refused (`CorpusError`, "misaligned `what`") unless they
    have as many lines; nothing is dropped."""
    sources, targets = read_lines(src_path), read_lines(tgt_path)
    if len(sources) != len(targets):
        raise CorpusError(
            f"misaligned {what}: {src_path} has {len(sources):,} lines but {tgt_path} has {len(targets):,}")
    return sources, targets


def read_parallel(src_path: str | Path, tgt_path: str | Path, name: str | None = None) -> ParallelCorpus:
    """Two aligned files, one sentence per line."""
    return pair_up(*read_aligned(src_path, tgt_path), name or Path(src_path).name)


def read_tsv(path: str | Path, name: str | None = None) -> ParallelCorpus:
    """One `source<TAB>target` pair per line."""
    sources, targets = [], []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise CorpusError(f"{path}:{number}: expected 2 tab-separated fields, found {len(fields)}")
        sources.append(fields[0])
        targets.append(fields[1])
    return pair_up(sources, targets, name or Path(path).name)


# ------------------------------------------------------------------ Multi30k
MULTI30K_SPLITS = ("train", "val", "test_2016_flickr")
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"


def multi30k_files(data_dir: str | Path, src_lang: str, tgt_lang: str) -> dict[str, tuple[Path, Path]]:
    data_dir = Path(data_dir)
    return {split: (data_dir / f"{split}.{src_lang}.gz", data_dir / f"{split}.{tgt_lang}.gz")
            for split in MULTI30K_SPLITS}


def load_multi30k(data_dir: str | Path, src_lang: str = "de", tgt_lang: str = "en") -> dict[str, ParallelCorpus]:
    """The three Multi30k task-1 splits from `DIR/{split}.{lang}.gz`."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CorpusError(f"{data_dir}: Multi30k folder not found (download it with "
                          f"`keras-attn download-multi30k {data_dir}` where you have internet)")
    return {split: read_parallel(src, tgt, name=f"multi30k/{split}.{src_lang}-{tgt_lang}")
            for split, (src, tgt) in multi30k_files(data_dir, src_lang, tgt_lang).items()}


def download_multi30k(dest: str | Path, langs=("de", "en"), base_url: str = MULTI30K_URL,
                      timeout: float = 60.0) -> list[Path]:
    """Fetch the raw Multi30k task-1 files into `dest` (skips files already there).

    Each file is downloaded to a temporary name, checked to be gzip, and renamed, so
    an interrupted download never leaves a truncated corpus behind.
    """
    dest = Path(dest)
    if problem := folder_problem(dest):
        raise CorpusError(f"{dest}: {problem}")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for split in MULTI30K_SPLITS:
        for lang in langs:
            name = f"{split}.{lang}.gz"
            target = dest / name
            if target.is_file():
                continue
            with writing(target), tempfile.NamedTemporaryFile(dir=dest, prefix=f".{name}.", delete=False) as tmp:
                try:
                    with urllib.request.urlopen(f"{base_url}/{name}", timeout=timeout) as response:
                        shutil.copyfileobj(response, tmp)
                    tmp.close()
                    with gzip.open(tmp.name, "rb") as check:
                        check.read()
                except BaseException as error:  # Ctrl-C too: no hidden partial file left behind
                    Path(tmp.name).unlink(missing_ok=True)
                    # Ctrl-C, and a full disk (said by `writing` about `target`, as every command says it)
                    if not isinstance(error, Exception) or getattr(error, "errno", None) in NO_ROOM:
                        raise
                    raise CorpusError(f"download of {base_url}/{name} failed: {error}") from error
            Path(tmp.name).replace(target)
            written.append(target)
    return written
