"""`keras-attn export`: trained model → ONNX bundle with the decode loop in the graph."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from keras_attn.config import is_int
from keras_attn.files import folder_locked, folder_problem, writing
from keras_attn.runtime.translator import (
    BUNDLE_FORMAT,
    N_BEST_OUTPUTS,
    Translator,
    TruncationWarning,
    check_beam,
    decode_limit,
    pre_pad,
    sha256,
)

VALIDATION_SENTENCES = 16
# The decode loops write with TensorScatterAdd, which is ONNX ScatterND with a reduction
# from opset 16 (at 13-15 the conversion failed in the ONNX checker, as a traceback).
MIN_OPSET = 16


class ExportError(RuntimeError):
    """The export could not produce a bundle that matches the TensorFlow model."""


def check_opset(opset) -> None:
    """Refuse an opset the graphs cannot be written in, before any conversion: from
    `MIN_OPSET` to the newest that the installed tf2onnx converts."""
    from tf2onnx import constants, version

    newest = max(constants.OPSET_TO_IR_VERSION)
    if not (is_int(opset) and MIN_OPSET <= opset <= newest):
        raise ValueError(f"opset {opset}: the graphs need an ONNX opset from {MIN_OPSET} to {newest} "
                         f"(the newest tf2onnx {version.version} converts)")


def load_training_run(train_dir: str | Path):
    """`(model, run_config, src_model_bytes, tgt_model_bytes)` from a training folder."""
    from keras_attn.saving import load_model

    train_dir = Path(train_dir)
    for name in ("model.keras", "config.json", "src.spm.model", "tgt.spm.model"):
        if not (train_dir / name).is_file():
            raise FileNotFoundError(f"{train_dir}: missing {name} (is this a `keras-attn train` folder?)")
    run_config = json.loads((train_dir / "config.json").read_text(encoding="utf-8"))
    model = load_model(train_dir / "model.keras")
    return model, run_config, (train_dir / "src.spm.model").read_bytes(), (train_dir / "tgt.spm.model").read_bytes()


def convert(function, encoder, opset: int):
    """One decode graph, checked: the encoder as ONNX `LSTM` ops (`onnx_encoder`) in
    front of the tf2onnx conversion of `function`, a `*_from_encoding` search of
    `InferenceModel` (loop → ONNX Loop)."""
    import onnx
    import tf2onnx

    from pipelines.onnx_encoder import encoder_model, with_encoder

    proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=opset)
    hoist_loop_constants(proto)
    proto = with_encoder(proto, encoder_model(encoder, opset))
    onnx.checker.check_model(proto)
    bad = sorted({node.domain for node in iter_nodes(proto.graph) if node.domain not in ("", "ai.onnx")})
    if bad:
        raise ExportError(f"the exported graph uses non-standard op domains {bad}")
    return proto


def hoist_loop_constants(model) -> int:
    """Make weights that tf2onnx threads through a `Loop` as loop-carried values
    initializers of the loop body instead.

    tf2onnx passes captured tensors into a Loop as state that every iteration
    returns unchanged. As body inputs they cannot be constant-folded, pre-packed by
    onnxruntime's GEMM, or quantized; as body initializers they can. Measured on the
    Multi30k model: fp32 greedy ~1.3x faster, and int8 quantization then reaches the
    matmuls inside the loop at all. Returns how many weights were moved.
    """
    import onnx

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    moved = 0
    for node in graph.node:
        if node.op_type != "Loop":
            continue
        body = next(a.g for a in node.attribute if a.name == "body")
        # Loop inputs: (max trip count, cond, carried...); body inputs: (iteration,
        # cond, carried...); body outputs: (cond, carried..., scans...); node outputs:
        # (carried..., scans...).
        pass_through = [j for j in range(len(node.input) - 2)
                        if node.input[2 + j] in initializers
                        and body.input[2 + j].name == body.output[1 + j].name]
        consumed = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        for j in reversed(pass_through):
            if node.output[j] in consumed:
                continue
            tensor = onnx.TensorProto()
            tensor.CopyFrom(initializers[node.input[2 + j]])
            tensor.name = body.input[2 + j].name
            body.initializer.append(tensor)
            del node.input[2 + j], body.input[2 + j], body.output[1 + j], node.output[j]
            moved += 1
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return moved


def iter_nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                yield from iter_nodes(attribute.g)


def initializers(graph):
    """Every initializer of `graph` and of its subgraphs (loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                yield from initializers(subgraph)


def share_weights(folder: Path, graph_names: list[str], data_name: str, threshold: int = 1024) -> None:
    """Store the large initializers of the graphs `graph_names` (in `folder`) once, in
    `folder/data_name`, as ONNX external data: the greedy and the beam graph hold the
    same weights, which each file would otherwise carry a copy of. Each distinct
    tensor is written once, at an offset aligned to 4 KiB (onnxruntime may map it)."""
    import hashlib

    import onnx

    offsets: dict[str, int] = {}
    with open(folder / data_name, "wb") as data:
        for name in graph_names:
            model = onnx.load(folder / name)
            for tensor in initializers(model.graph):
                if len(tensor.raw_data) < threshold:
                    continue
                key = hashlib.sha256(tensor.raw_data).hexdigest()
                if key not in offsets:
                    offsets[key] = data.seek(-data.tell() % 4096, os.SEEK_CUR)
                    data.write(tensor.raw_data)
                entries = {"location": data_name, "offset": str(offsets[key]), "length": str(len(tensor.raw_data))}
                del tensor.external_data[:]
                for entry_key, value in entries.items():
                    tensor.external_data.add(key=entry_key, value=value)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
            onnx.save(model, folder / name)


def quantize_int8(source: Path, target: Path):
    """onnxruntime dynamic int8 quantization, loop bodies included."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a warning per non-float tensor
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         extra_options={"EnableSubgraph": True})
    finally:
        root.setLevel(level)


def validation_sentences(run_config: dict, n: int = VALIDATION_SENTENCES) -> list[str]:
    """A few held-out source sentences of the training run to check the export on."""
    from pipelines.config import TrainConfig
    from pipelines.train import load_corpora

    train_cfg = TrainConfig(**{**run_config["train"], "verbose": 0})
    try:
        _, valid, _ = load_corpora(train_cfg)
        return valid.sources[:n]
    except (OSError, ValueError):  # the corpus is not on this machine: use plain strings
        return ["a test sentence", "2009", "ein Hund läuft", "25 June 2009"][:n]


def check_parity(translator: Translator, inference, sentences: list[str], beam: int, alpha: float):
    """The ONNX graphs must give the TensorFlow model's ids for every sentence (as
    encoded: a sentence cut to the source limit is checked as cut, without a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        rows = [r for r in translator.encode(sentences) if r]
    source = pre_pad(rows)
    limit = decode_limit([len(r) for r in rows], translator.max_tgt_len)  # one cap per sentence
    for kind, size in (("greedy", 1), ("beam", beam)):
        onnx_out = translator.decode_ids(source, size, None, alpha, n_best=True)  # the same caps, by default
        tf_out = inference.translate_ids(source, limit, size, alpha)
        for name in ("ids", *(N_BEST_OUTPUTS[:1] if size > 1 else ())):  # beam: every hypothesis of the final beam
            onnx_ids, tf_ids = onnx_out[name], tf_out[name].numpy()
            if onnx_ids.shape != tf_ids.shape or not np.array_equal(onnx_ids, tf_ids):
                raise ExportError(f"{kind} ONNX output {name} differs from TensorFlow on the validation "
                                  "sentences; the bundle was not written")


def export(train_dir, out, beam: int = 5, alpha: float = 0.6, quantize: str | None = None,
           opset: int = 17, max_len: int | None = None, log=print) -> Path:
    """Write an export bundle to `out` atomically (temp folder, then rename). `beam` and
    `alpha`: the beam search the export checks against TensorFlow, recorded in
    `config.json` (`alpha` is the bundle's default length penalty; translation is
    greedy unless asked for a beam)."""
    from keras_attn.search import InferenceModel

    start = time.perf_counter()
    out = Path(out)
    if out.is_symlink():  # replace the linked folder and keep the link, as files are written
        out = out.resolve()  # (the rename replaced the link and left `.name.old-PID` linking to the old)
    check_opset(opset)
    check_beam(beam)  # the parity check's beam: refused now, not after the conversion
    check_output_folder(out)  # before the conversion's minutes, not at the final rename
    model, run_config, src_model, tgt_model = load_training_run(train_dir)
    inference = InferenceModel(model, fold_embeddings=True)
    max_len = max_len or int(run_config["train"].get("max_len", 100))
    staging = staging_dir(out)
    with writing(out):  # a full disk: one line naming --out, not a staging file
        try:
            graphs, weights = write_graphs(staging, inference, model.encoder, opset, quantize, log)
            (staging / "src.spm.model").write_bytes(src_model)
            (staging / "tgt.spm.model").write_bytes(tgt_model)
            config = bundle_config(staging, out.name, model.config, run_config["train"], graphs, weights,
                                   {"max_src_len": max_len, "max_tgt_len": max_len,
                                    "beam": beam, "alpha": alpha, "opset": opset})
            (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            log("[export] checking onnxruntime against TensorFlow on validation sentences ...")
            check_parity(Translator.load(staging), inference, validation_sentences(run_config), beam, alpha)
            replace_dir(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"[export] wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))}) "
        f"in {time.perf_counter() - start:.0f} s")
    return out


def check_output_folder(out: Path) -> None:
    """Refuse an `out` whose replacement would lose something. The export replaces the
    folder whole (`replace_dir`), so it must be new, empty, or an export bundle (a
    re-export): `--out` a folder of other files, or the training folder, lost what it held."""
    if problem := folder_problem(out.parent):
        raise ValueError(f"{out}: {problem}")
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: is a file, not an export folder")
    if any(out.iterdir()) and not is_export_bundle(out):
        raise ValueError(f"{out}: holds files and is not an export bundle; the export replaces the "
                         "whole folder, so choose a new folder (or an earlier export's)")


def is_export_bundle(folder: Path) -> bool:
    """`folder/config.json` is an export bundle's (a JSON object with a `format`, any format)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8, not JSON
        return False
    return isinstance(config, dict) and "format" in config


def staging_dir(out: Path) -> Path:
    """An empty folder next to `out` (same file system, so the final rename is atomic),
    with the permissions a shared folder gets under the current umask."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:  # the message named the hidden staging folder, not --out
        raise ValueError(f"{out}: cannot write in {out.parent} ({error.strerror})") from None
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle is for sharing
    return staging


def write_graphs(staging: Path, inference, encoder, opset: int, quantize: str | None, log):
    """Convert the greedy and beam graphs (and their int8 copies if asked), one weights
    file per precision shared by its two graphs; returns config.json's `graphs` and
    `weights` entries."""
    for name, function in (("model.onnx", inference.greedy_from_encoding),
                           ("model_beam.onnx", inference.beam_search_from_encoding)):
        log(f"[export] converting {function.__name__} to ONNX (opset {opset}) ...")
        proto = convert(function, encoder, opset)
        (staging / name).write_bytes(proto.SerializeToString())
        if quantize == "int8":
            quantize_int8(staging / name, staging / name.replace(".onnx", ".int8.onnx"))
    weights = {}
    for precision in ("", ".int8"):
        names = [f"model{precision}.onnx", f"model_beam{precision}.onnx"]
        if (staging / names[0]).is_file():
            share_weights(staging, names, f"weights{precision}.bin")
            weights[f"weights{precision}.bin"] = file_entry(staging / f"weights{precision}.bin")
    graphs = {name: file_entry(staging / name) for name in sorted(p.name for p in staging.glob("*.onnx"))}
    return graphs, weights


def bundle_config(staging: Path, name: str, model_cfg, train: dict, graphs: dict, weights: dict,
                  decoding: dict) -> dict:
    """The bundle's config.json: format, languages, special ids, `decoding` (length
    limits, beam, alpha, opset), files with their hashes, and the model's config."""
    multi30k = train.get("corpus") == "multi30k"  # the language settings name Multi30k's files only
    return {
        "format": BUNDLE_FORMAT,
        "name": name,
        "source_language": train.get("src_lang") if multi30k else None,
        "target_language": train.get("tgt_lang") if multi30k else None,
        "corpus": train.get("corpus"),
        "pad_id": model_cfg.pad_id, "unk_id": model_cfg.unk_id,
        "bos_id": model_cfg.bos_id, "eos_id": model_cfg.eos_id,
        **decoding,
        "graphs": graphs,
        "weights": weights,  # the graphs' external data (ONNX), each file shared by two graphs
        "tokenizers": {
            "src": {"file": "src.spm.model", "sha256": sha256(staging / "src.spm.model"),
                    "vocab_size": model_cfg.src_vocab_size},
            "tgt": {"file": "tgt.spm.model", "sha256": sha256(staging / "tgt.spm.model"),
                    "vocab_size": model_cfg.tgt_vocab_size},
        },
        "model": model_cfg.to_dict(),
    }


def file_entry(path: Path) -> dict:
    return {"sha256": sha256(path), "bytes": path.stat().st_size}


def replace_dir(staging: Path, out: Path):
    """Move the finished staging folder into place; an older bundle is replaced. Two
    exports to one `--out` swap one after the other (the last one's bundle stays):
    between one's two renames the other saw no `out` and renamed its staging there,
    and the first's rename then failed with "Directory not empty"."""
    with folder_locked(out.parent):
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
