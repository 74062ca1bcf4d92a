"""`Translator`: an export bundle (ONNX graphs + SentencePiece) behind a small API.

Imports only numpy, onnxruntime and sentencepiece.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from keras_attn.config import MAX_BEAM, is_int  # a plain-Python module: no TensorFlow import

BUNDLE_FORMAT = 2  # 2: the graphs take one output cap per sentence
REQUIRED_FILES = ("config.json", "model.onnx", "model_beam.onnx", "src.spm.model", "tgt.spm.model")
N_BEST_OUTPUTS = ["n_best_ids", "n_best_log_probs"]  # the beam graph's, since 2026-11-27
INT32_MAX = 2**31 - 1  # the largest max_len the graphs' int32 input holds


class BundleError(ValueError):
    """The export bundle is missing, damaged or inconsistent."""


class TruncationWarning(UserWarning):
    """Inputs longer than the model's source limit were cut to it; `positions`: where
    they are in the list that was translated (from 0)."""

    def __init__(self, message: str, positions: list[int]):
        super().__init__(message)
        self.positions = positions


@dataclasses.dataclass
class Translation:
    """One translation with the attention that produced it."""

    text: str
    source_tokens: list[str]
    target_tokens: list[str]  # EOS included when produced
    attention: np.ndarray  # (len(target_tokens), len(source_tokens))
    log_prob: float
    n_best: list[tuple[str, float]] = dataclasses.field(default_factory=list)  # (text, log-prob), best first


def read_bundle_config(bundle: Path) -> dict:
    """The bundle's `config.json`, after checking the folder has every required file and
    the format is the one this runtime reads."""
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: export bundle folder not found")
    for name in REQUIRED_FILES:
        if not (bundle / name).is_file():
            raise BundleError(f"{bundle}: missing {name} (not a complete keras-attn export bundle)")
    try:
        config = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{bundle / 'config.json'}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise BundleError(f"{bundle / 'config.json'}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{bundle / 'config.json'}: bundle format {config.get('format')!r}, "
                          f"this runtime reads format {BUNDLE_FORMAT} (re-export it with `keras-attn export`)")
    problem = bad_config_entry(config)
    if problem:  # a hand edit gave a KeyError, or int()'s message without the file
        raise BundleError(f"{bundle / 'config.json'}: {problem} (file damaged or edited; re-export the bundle)")
    return config


def bad_config_entry(config: dict) -> str | None:
    """What is wrong with the first config.json entry the runtime reads that is missing
    or of the wrong kind; None if they are all right."""
    checks = [(key, is_int, "an integer") for key in ("max_src_len", "max_tgt_len", "pad_id", "eos_id")] + [
        ("alpha", is_length_penalty, "a number >= 0"),
        *((key, lambda value: isinstance(value, dict), "an object") for key in ("graphs", "tokenizers"))]
    for key, check, kind in checks:
        if not check(config.get(key)):
            return f"{key} must be {kind}, got {config.get(key)!r}"
    return bad_file_entry(config)


def bad_file_entry(config: dict) -> str | None:
    """What is wrong with the first entry describing a file; None if they are all right.
    `tokenizers.src` and `.tgt`: objects with a `sha256` string and an integer
    `vocab_size`. `graphs.NAME` and `weights.NAME`: objects whose `sha256`, when listed,
    is a string (a file listed without one is not checked). `weights` may be absent
    (bundles exported before it)."""
    if not isinstance(config.get("weights", {}), dict):
        return f"weights must be an object, got {config['weights']!r}"
    for side in ("src", "tgt"):
        entry = config["tokenizers"].get(side)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and is_int(entry.get("vocab_size"))):
            return f"tokenizers.{side} must be an object with a sha256 string and an integer vocab_size, got {entry!r}"
    for key in ("graphs", "weights"):
        for name, entry in config.get(key, {}).items():
            if not (isinstance(entry, dict) and isinstance(entry.get("sha256", ""), str)):
                return f"{key}.{name} must be an object whose sha256 is a string, got {entry!r}"
    return None


def load_tokenizers(bundle: Path, config: dict) -> tuple:
    """The source and target SentencePiece processors, checked against `config.json`
    (hash and vocabulary size)."""
    import sentencepiece as spm

    processors = []
    for side in ("src", "tgt"):
        path = bundle / f"{side}.spm.model"
        if sha256(path) != config["tokenizers"][side]["sha256"]:
            raise BundleError(f"{path}: does not match config.json (the tokenizer is from another "
                              "model; re-export the bundle)")
        sp = spm.SentencePieceProcessor(model_file=str(path))
        if sp.get_piece_size() != config["tokenizers"][side]["vocab_size"]:
            raise BundleError(f"{bundle}: {side}.spm.model vocabulary does not match config.json")
        processors.append(sp)
    return tuple(processors)


def open_graphs(bundle: Path, config: dict, int8: bool, threads: int) -> tuple[dict, dict]:
    """onnxruntime sessions on `threads` cores for the greedy and the beam graph (fp32,
    or int8), and their paths, each file checked against `config.json` first."""
    precision = ".int8" if int8 else ""  # the file names' infix: model.int8.onnx, weights.int8.bin
    graphs = {"greedy": f"model{precision}.onnx", "beam": f"model_beam{precision}.onnx"}
    check_weights(bundle, config, f"weights{precision}.bin")
    sessions, paths = {}, {}
    for kind, name in graphs.items():
        path = paths[kind] = bundle / name
        if not path.is_file():
            raise BundleError(f"{bundle}: missing {name}" + (" (export with --quantize int8)" if int8 else ""))
        check_checksum(path, config["graphs"].get(name, {}).get("sha256"))
        try:
            sessions[kind] = open_session(path, threads)
        except Exception as error:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime cannot load it: {error}") from None
    return sessions, paths


def check_weights(bundle: Path, config: dict, name: str) -> None:
    """The graphs' external weights file `name`, when the bundle has one (exports since
    2026-11-27 evening): present and unchanged."""
    expected = config.get("weights", {}).get(name, {}).get("sha256")
    if expected is None:
        return
    if not (bundle / name).is_file():
        raise BundleError(f"{bundle}: missing {name} (the graphs' weights; copy the whole bundle folder)")
    check_checksum(bundle / name, expected)


def check_checksum(path: Path, expected: str | None) -> None:
    """`path`'s SHA-256 is the one `config.json` lists (a bundle that lists none is not checked)."""
    if expected and sha256(path) != expected:
        raise BundleError(f"{path}: checksum does not match config.json (file damaged or replaced)")


def file_identities(paths) -> list:
    """What changes when a file is replaced or rewritten: device, inode, size and
    modification time of each of `paths` (None for one that is gone)."""
    def identity(path):
        try:
            info = path.stat()
        except OSError:
            return None
        return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns

    return [identity(path) for path in paths]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pre_pad(rows: list[list[int]]) -> np.ndarray:
    """Left-pad id lists with 0 (the encoder's layout) into an int32 matrix."""
    width = max([len(r) for r in rows] + [1])
    out = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        if row:
            out[i, width - len(row):] = row
    return out


def strip_special(ids, eos_id=3, pad_id=0) -> list[int]:
    """Token ids up to (not including) EOS, pads dropped."""
    out = []
    for token in ids:
        token = int(token)
        if token == eos_id:
            break
        if token != pad_id:
            out.append(token)
    return out


def length_sorted_batches(lengths: list[int], batch_size: int, beam: int = 1) -> list[np.ndarray]:
    """Index batches of similar length (less padding), each of at most `batch_size`
    sentences and, for a beam search, at most `MAX_BEAM` hypotheses (sentences x `beam`);
    callers restore the order."""
    if not is_positive_int(batch_size):  # a negative step would give no batches, so no outputs
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    rows = max(1, min(batch_size, MAX_BEAM // beam))
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + rows] for i in range(0, len(order), rows)]


def decode_limit(src_lens, max_len: int, fixed: int | None = None) -> np.ndarray:
    """Each sentence's output cap (EOS included), int32 `(len(src_lens),)`: `fixed`
    for all when given, else `min(max_len, 2 * source length + 10)`."""
    src_lens = np.asarray(src_lens)
    caps = np.full(src_lens.shape, fixed) if fixed else np.minimum(max_len, 2 * src_lens + 10)
    return caps.astype(np.int32)


def thread_count(threads: int | None = None) -> int:
    """Cores to use: `threads`, else $KERAS_ATTN_THREADS, else the cores this process may
    run on (`threads` None or 0, as onnxruntime's 0, means the default)."""
    if threads is not None and threads != 0:
        if not is_positive_int(threads):  # onnxruntime took -1, and 2.5 failed as if the graph were damaged
            raise ValueError(f"threads must be a positive integer (or None for the default), got {threads!r}")
        return threads
    variable = os.environ.get("KERAS_ATTN_THREADS", "").strip()
    if variable:
        try:
            count = int(variable)
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"KERAS_ATTN_THREADS must be a positive integer, got {variable!r}")
        return count
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def session_options(threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = thread_count(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def open_session(path: Path, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


class Translator:
    """Translate with an export bundle written by `keras-attn export`.

    `Translator.load(bundle)` checks the bundle (files, format, tokenizer hashes) and
    opens the ONNX graphs. `translate` is thread-safe: one instance can serve many
    threads.

    One batch (a short request) runs on a session that uses all `threads` cores, for
    latency. Several batches run `threads` at a time, each on a single-threaded
    session: the decode loop's many small ops leave all but one core idle between
    the matrix products, so one batch per core keeps every core busy (on the 2-core
    reference machine, 15-20 % more sentences/s on Multi30k test2016).
    """

    def __init__(self, bundle: Path, config: dict, src_sp, tgt_sp, sessions: dict, graphs: dict,
                 threads: int):
        self.bundle, self.config = bundle, config
        self.src_sp, self.tgt_sp = src_sp, tgt_sp
        self.sessions, self.graphs, self.threads = sessions, graphs, threads
        self._worker_sessions, self._lock = None, threading.Lock()
        # The files the sessions were opened from, as they were: the worker sessions open
        # later, and must not open a bundle exported over this one in the meantime.
        self._session_files = [*graphs.values(), *sorted(bundle.glob("weights*.bin"))]
        self._loaded_files, self._bundle_changed = file_identities(self._session_files), False
        self.max_src_len = int(config["max_src_len"])
        self.max_tgt_len = int(config["max_tgt_len"])
        self.eos_id, self.pad_id = int(config["eos_id"]), int(config["pad_id"])

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, bundle: str | Path, int8: bool = False, threads: int | None = None) -> Translator:
        bundle, threads = Path(bundle), thread_count(threads)
        config = read_bundle_config(bundle)
        src_sp, tgt_sp = load_tokenizers(bundle, config)
        sessions, paths = open_graphs(bundle, config, int8, threads)
        return cls(bundle, config, src_sp, tgt_sp, sessions, paths, threads)

    def __reduce__(self):
        """Pickled as `load`'s arguments, since onnxruntime sessions cannot be pickled: a
        process that unpickles it loads the bundle again (`multiprocessing` workers
        started by spawn, `pool.map(translator.translate, chunks)`)."""
        int8 = self.graphs["greedy"].name.endswith(".int8.onnx")
        return type(self).load, (self.bundle, int8, self.threads)

    # ------------------------------------------------------------ translating
    def encode(self, sentences: list[str], stacklevel: int = 2) -> list[list[int]]:
        """Source ids, truncated to the model's max source length (one `TruncationWarning`,
        pointing `stacklevel` frames up: 2 = the caller of `encode`)."""
        return encode_sources(sentences, self.src_sp, self.max_src_len, stacklevel + 1)

    def decode_ids(self, source_ids: np.ndarray, beam: int = 1, max_len: int | None = None,
                   alpha: float | None = None, sessions: dict | None = None, n_best: bool = False) -> dict:
        """One `InferenceSession.run` over a pre-padded id batch (on `sessions`,
        default the all-cores ones). Each sentence's output is capped by `max_len`,
        default `decode_limit` of its own length (not the batch's width). `n_best`
        (beam > 1): also the whole final beam, `n_best_ids` and `n_best_log_probs`."""
        self._check(beam, max_len, alpha)
        source_ids = check_source_ids(source_ids, self.src_sp.get_piece_size())
        sessions = sessions or self.sessions
        lengths = np.count_nonzero(source_ids != self.pad_id, axis=1)
        feeds = {"source_ids": source_ids,
                 "max_len": decode_limit(lengths, self.max_tgt_len, max_len)}
        session = sessions["greedy"]
        if beam > 1:
            session = sessions["beam"]
            feeds["beam_size"] = np.array(beam, np.int32)
            feeds["alpha"] = np.array(self.config["alpha"] if alpha is None else alpha, np.float32)
        names = ["ids", "attention", "log_probs"] + (N_BEST_OUTPUTS if n_best and beam > 1 else [])
        return dict(zip(names, session.run(names, feeds), strict=True))

    def _check(self, beam, max_len, alpha=None):
        check_beam(beam)
        if max_len is not None:
            check_max_len(max_len)
        if alpha is not None and not is_length_penalty(alpha):
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")

    def translate(self, sentences: list[str], beam: int = 1, max_len: int | None = None,
                  batch_size: int = 64, alpha: float | None = None) -> list[str]:
        """Translations in input order; an empty (or whitespace) line gives "".

        `alpha` is the beam length penalty (default: the bundle's `config.json`); with
        `beam=1` (greedy) it has no effect, and a `UserWarning` says so.
        """
        return [t.text for t in self._translate(sentences, beam, max_len, batch_size, False, alpha)]

    def translate_with_attention(self, sentences: list[str], beam: int = 1,
                                 max_len: int | None = None) -> list[Translation]:
        return self._translate(sentences, beam, max_len, 64, attention=True)

    def translate_n_best(self, sentences: list[str], n: int, beam: int | None = None, max_len: int | None = None,
                         batch_size: int = 64, alpha: float | None = None) -> list[list[tuple[str, float]]]:
        """The `n` best translations of each sentence with their log-probabilities, best
        first: the final beam of a beam search `beam` wide (default `n`, at least `n`),
        ranked by log-probability over the length penalty `alpha` (default: the
        bundle's). `n` = 1 with `beam` = 1 is greedy. An empty line gives `n` times ("", 0.0)."""
        beam = n if beam is None else beam
        if not is_positive_int(n):
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self._check(beam, max_len)
        if beam < n:
            raise ValueError(f"the {n} best translations need a beam of at least {n}, got {beam}")
        if beam > 1 and not set(N_BEST_OUTPUTS) <= {o.name for o in self.sessions["beam"].get_outputs()}:
            raise BundleError(f"{self.graphs['beam']}: no n-best outputs (exported before they existed); "
                              "re-export the bundle with `keras-attn export`")
        results = self._translate(sentences, beam, max_len, batch_size, False, alpha, n_best=beam > 1)
        if beam == 1:
            return [[(r.text, r.log_prob)] for r in results]
        return [r.n_best[:n] or [("", 0.0)] * n for r in results]  # no n-best: an empty line

    def _translate(self, sentences, beam, max_len, batch_size, attention, alpha=None, n_best=False):
        self._check(beam, max_len, alpha)
        if alpha is not None and beam == 1:  # the caller of translate*: 3 frames up
            warnings.warn("alpha, the beam's length penalty, has no effect with greedy decoding (beam=1)",
                          stacklevel=3)
        if isinstance(sentences, str):
            raise TypeError("translate takes a list of sentences, not a single string")
        encoded = self.encode(list(sentences), stacklevel=4)  # the caller of translate*
        results = [Translation("", [], [], np.zeros((0, 0), np.float32), 0.0) for _ in encoded]
        todo = [i for i, ids in enumerate(encoded) if ids]  # empty inputs keep the empty result
        batches = [[todo[j] for j in batch]
                   for batch in length_sorted_batches([len(encoded[i]) for i in todo], batch_size, beam)]

        def run(batch, sessions):
            rows = [encoded[i] for i in batch]
            out = self.decode_ids(pre_pad(rows), beam, max_len, alpha, sessions, n_best)
            width = out["attention"].shape[-1]
            return [(i, self._result(out, row, rows[row], width, attention)) for row, i in enumerate(batch)]

        sessions = self._single_thread_sessions() if len(batches) > 1 and self.threads > 1 else None
        if sessions:
            with ThreadPoolExecutor(min(self.threads, len(batches))) as pool:
                done = list(pool.map(lambda batch: run(batch, sessions), batches))
        else:
            done = [run(batch, self.sessions) for batch in batches]
        for part in done:
            for i, translation in part:
                results[i] = translation
        return results

    def _single_thread_sessions(self) -> dict | None:
        """Sessions with one intra-op thread, opened on first use, shared by the workers;
        None (with one warning) when the bundle's files changed on disk since `load`
        (a re-export into its folder): the worker sessions would run another model than
        the one loaded, with this one's tokenizers, so the batches run on the loaded
        sessions one after another instead."""
        with self._lock:
            if self._worker_sessions is None and not self._bundle_changed:
                if file_identities(self._session_files) == self._loaded_files:
                    self._worker_sessions = {kind: open_session(path, 1) for kind, path in self.graphs.items()}
                else:
                    self._bundle_changed = True  # warned once
                    warnings.warn(f"{self.bundle}: the bundle changed on disk since it was loaded; translating "
                                  "with the loaded model, one batch at a time (load the bundle again to use "
                                  "the new one)", UserWarning, stacklevel=4)
        return self._worker_sessions

    def _text(self, ids) -> str:
        return self.tgt_sp.decode(strip_special(ids, self.eos_id, self.pad_id))

    def _result(self, out, row, src_ids, width, attention) -> Translation:
        ids = [int(t) for t in out["ids"][row]]
        text = self._text(ids)
        if not attention:
            n_best = [(self._text(hypothesis), float(log_prob)) for hypothesis, log_prob
                      in zip(out["n_best_ids"][row], out["n_best_log_probs"][row])] if "n_best_ids" in out else []
            return Translation(text, [], [], np.zeros((0, 0), np.float32), float(out["log_probs"][row]), n_best)
        n_out = ids.index(self.eos_id) + 1 if self.eos_id in ids else len([t for t in ids if t != self.pad_id])
        matrix = out["attention"][row, :n_out, width - len(src_ids):]
        return Translation(text, [self.src_sp.id_to_piece(i) for i in src_ids],
                           [self.tgt_sp.id_to_piece(t) for t in ids[:n_out]], matrix,
                           float(out["log_probs"][row]))


def encode_sources(sentences: list[str], src_sp, limit: int, stacklevel: int = 2) -> list[list[int]]:
    """The ids of each `clean`ed sentence under `src_sp`, cut to `limit` pieces; one
    `TruncationWarning` names the positions cut, pointing `stacklevel` frames up as
    `warnings.warn` counts them (2 = the caller of this function). The runtime and the
    TensorFlow path (`pipelines.decode`) both encode through here."""
    encoded = [src_sp.encode(clean(s)) for s in sentences]
    long = [i for i, ids in enumerate(encoded) if len(ids) > limit]
    if long:
        shown = ", ".join(map(str, long[:10])) + (", ..." if len(long) > 10 else "")
        message = (f"{len(long)} input(s) longer than {limit} source tokens were truncated "
                   f"(positions {shown} in the list, from 0)")
        warnings.warn(TruncationWarning(message, long), stacklevel=stacklevel)
    return [e[:limit] for e in encoded]


def check_source_ids(source_ids, vocab_size: int) -> np.ndarray:
    """`source_ids` as int32, once it is a batch the graphs can take: 2-D
    `(batch, src_len)`, neither size 0, integer ids in `[0, vocab_size)`. Unchecked,
    onnxruntime crashed the process on an empty batch (a segmentation fault), failed
    in a `Mod` node on zero width, and read -1 as the vocabulary's last id."""
    array = np.asarray(source_ids)
    if array.ndim != 2 or 0 in array.shape or not np.issubdtype(array.dtype, np.integer):
        raise ValueError("source_ids must be a 2-D integer array (batch, src_len) with at least one row "
                         f"and one column, got {array.dtype} of shape {array.shape}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"source_ids must be ids from 0 to {vocab_size - 1} (the source vocabulary), "
                         f"got ids from {low} to {high}")
    return array.astype(np.int32)


def is_positive_int(value) -> bool:
    """`value` is an int >= 1, not a bool (`beam=True` is a mistake, not beam 1)."""
    return is_int(value) and value >= 1


def is_length_penalty(value) -> bool:
    """`value` can be the beam's length penalty alpha: a finite number >= 0 (NaN, which
    numpy makes of a JSON null, would rank the hypotheses by NaN scores)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < float("inf")


def check_beam(beam) -> None:
    """A ValueError unless `beam` is a positive int up to `MAX_BEAM`."""
    if not (is_positive_int(beam) and beam <= MAX_BEAM):
        raise ValueError(f"beam must be a positive integer up to {MAX_BEAM}, got {beam!r}")


def check_max_len(max_len) -> None:
    """A ValueError unless `max_len` is a positive int up to `INT32_MAX`: the graphs take
    it as an int32, so a larger one would wrap (`max_len` 2**32 + 3 gave 3 tokens)."""
    if not (is_positive_int(max_len) and max_len <= INT32_MAX):
        raise ValueError(f"max_len must be a positive integer up to {INT32_MAX}, got {max_len!r}")


def clean(sentence) -> str:
    """Normalize one input line: str, no control characters, stripped."""
    if not isinstance(sentence, str):
        raise TypeError(f"sentences must be str, got {type(sentence).__name__}")
    return "".join(ch if ch.isprintable() or ch == " " else " " for ch in sentence).strip()
