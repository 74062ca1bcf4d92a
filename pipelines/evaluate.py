"""`keras-attn evaluate`: sacreBLEU, chrF, exact match and speed of a bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

from keras_attn.files import atomic_write
from pipelines.corpus import CorpusError, read_aligned


def score(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacreBLEU, cased, 13a, detokenized) and exact match."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(bleu_score.score, 2), "bleu_signature": str(bleu.get_signature()),
        "chrf": round(chrf_score.score, 2), "chrf_signature": str(chrf.get_signature()),
        "exact_match": sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / max(1, len(references)),
    }


def translate_with(runtime: str, bundle: str, config: dict, sources: list[str], beam: int, int8: bool,
                   train_dir: str | None, alpha: float):
    if runtime == "onnx":
        from keras_attn.runtime import Translator

        translator = Translator.load(bundle, int8=int8)
        return lambda: translator.translate(sources, beam=beam, alpha=alpha if beam > 1 else None)
    from keras_attn.search import InferenceModel
    from pipelines.decode import translate_tf
    from pipelines.export import load_training_run
    from pipelines.tokenizer import load_processor

    model, _, src_model, tgt_model = load_training_run(train_dir)
    inference = InferenceModel(model)
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    return lambda: translate_tf(inference, sources, src_sp, tgt_sp, max_len=config["max_tgt_len"],
                                beam_size=beam, alpha=alpha)


def check_runtime_options(bundle, config: dict, runtime: str, int8: bool, train_dir) -> None:
    """`--runtime tf` runs the training folder's Keras model in float32, so it needs that
    folder, and the folder must be the bundle's (same tokenizers); `--runtime onnx`
    runs the bundle alone. A flag the runtime would ignore is refused, not ignored."""
    from keras_attn.runtime.translator import sha256

    if runtime == "onnx":
        if train_dir is not None:
            raise ValueError("--train-dir is for --runtime tf (the onnx runtime uses the bundle alone)")
        return
    if int8:
        raise ValueError("--int8 is for --runtime onnx (the tf runtime runs the trained model in float32)")
    if train_dir is None:
        raise ValueError("--runtime tf needs --train-dir (the training folder the bundle was exported from)")
    for side in ("src", "tgt"):
        path = Path(train_dir) / f"{side}.spm.model"
        if path.is_file() and sha256(path) != config["tokenizers"][side]["sha256"]:
            raise ValueError(f"{path}: not the tokenizer of {bundle} (--train-dir is another model's folder)")


def read_test_set(src, ref) -> tuple[list[str], list[str]]:
    """Source lines and their references, every line kept (empty ones too), refused
    unless aligned line for line and at least one line long (sacreBLEU's corpus score
    of no sentences raises an IndexError)."""
    sources, references = read_aligned(src, ref, what="files")
    if not sources:
        raise CorpusError(f"{src}: no lines to score (the file is empty)")
    return sources, references


def evaluate(bundle, src, ref, beam=1, runtime="onnx", int8=False, train_dir=None,
             alpha=None) -> tuple[dict, list[str]]:
    """The report and the translations. `alpha`: the beam length penalty; `None` = the
    bundle's (`config.json`). Source lines longer than the bundle's source limit are
    translated from their first pieces, named on stderr and listed in the report
    (`truncated_lines`, from 1)."""
    from keras_attn.runtime.translator import read_bundle_config
    from pipelines.translate import collecting_truncations, report_truncation

    config = read_bundle_config(Path(bundle))
    check_runtime_options(bundle, config, runtime, int8, train_dir)
    sources, references = read_test_set(src, ref)
    alpha = config["alpha"] if alpha is None else alpha
    run = translate_with(runtime, bundle, config, sources, beam, int8, train_dir, alpha)
    with collecting_truncations() as cut:
        start = time.perf_counter()
        hypotheses = run()
        seconds = time.perf_counter() - start
    truncated = report_truncation(cut, str(src), 1, config["max_src_len"])  # every line kept: index + 1
    report = {
        "bundle": str(bundle), "runtime": runtime + ("-int8" if int8 else ""), "beam": beam,
        "alpha": alpha if beam > 1 else None,
        "src": str(src), "ref": str(ref), "sentences": len(sources), "truncated_lines": truncated,
        **score(hypotheses, references),
        "seconds": round(seconds, 3),
        "sentences_per_second": round(len(sources) / seconds, 1),
        "target_tokens": (tokens := target_tokens(bundle, hypotheses)),
        "target_tokens_per_second": round(tokens / seconds, 1),
    }
    return report, hypotheses


def target_tokens(bundle, hypotheses: list[str]) -> int:
    """The hypotheses' pieces under the bundle's target SentencePiece model (its
    deterministic segmentation, which training's tokens/s counts too; training counts
    EOS as well, which a translation does not output)."""
    import sentencepiece as spm

    tgt_sp = spm.SentencePieceProcessor(model_file=str(Path(bundle) / "tgt.spm.model"))
    return sum(len(pieces) for pieces in tgt_sp.encode(hypotheses))


def table(report: dict) -> str:
    keys = ["runtime", "beam", "sentences", "bleu", "chrf", "exact_match", "sentences_per_second",
            "target_tokens_per_second"]
    rows = [f"| {k} | {report[k]:.4f} |" if isinstance(report[k], float) and k == "exact_match"
            else f"| {k} | {report[k]} |" for k in keys]
    return "\n".join(["| metric | value |", "| --- | --- |", *rows, f"\nBLEU: {report['bleu_signature']}",
                      f"chrF: {report['chrf_signature']}"])


def evaluate_command(args):
    report, _ = evaluate(args.bundle, args.src, args.ref, args.beam, args.runtime, args.int8, args.train_dir,
                         args.alpha)
    print(table(report))
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=2) + "\n")


# ---------------------------------------------------------------- tune-alpha
ALPHAS = (0.0, 0.4, 0.6, 0.8, 1.0, 1.2)


def tune_alpha(translator, sources: list[str], references: list[str], beam: int = 5, alphas=ALPHAS,
               progress=None) -> list[dict]:
    """Beam-search BLEU and chrF of `sources` at each length penalty in `alphas`, in
    their order; `progress(row)` after each. Choose on a validation set, never the test set."""
    check_tuning_beam(beam)
    rows = []
    for alpha in alphas:
        scores = score(translator.translate(sources, beam=beam, alpha=alpha), references)
        rows.append({"alpha": alpha, "bleu": scores["bleu"], "chrf": scores["chrf"]})
        if progress:
            progress(rows[-1])
    return rows


def check_tuning_beam(beam: int) -> None:
    """A beam of 1 is refused: every alpha gave the same greedy output, and `--write`
    made the first listed the bundle's default."""
    if beam == 1:
        raise ValueError("--beam 1: the length penalty ranks a beam's hypotheses and greedy decoding has none; "
                         "give --beam 2 or more")


def best_row(rows: list[dict]) -> dict:
    """The highest BLEU; of equal ones, the first listed."""
    return max(rows, key=lambda row: row["bleu"])


def write_bundle_alpha(bundle, best: dict, src, beam: int) -> Path:
    """Make `best`'s alpha (a `tune_alpha` row) the bundle's default length penalty
    (`config.json`, rewritten whole), with where it was chosen (`alpha_tuned_on`: the
    sources `src`, the beam size and the BLEU it scored)."""
    path = Path(bundle) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["alpha"] = best["alpha"]
    config["alpha_tuned_on"] = {"src": str(src), "beam": beam, "bleu": best["bleu"]}
    atomic_write(path, json.dumps(config, indent=2) + "\n")
    return path


def tune_alpha_command(args):
    from keras_attn.runtime import Translator
    from pipelines.translate import collecting_truncations, report_truncation

    check_tuning_beam(args.beam)  # before the table's header
    sources, references = read_test_set(args.src, args.ref)
    translator = Translator.load(args.bundle, int8=args.int8)
    print(f"beam {args.beam} on {args.src} ({len(sources):,} sentences), bundle's alpha {translator.config['alpha']}:")
    print("| alpha | BLEU | chrF |\n| --- | --- | --- |")
    with collecting_truncations() as cut:  # the same lines at every alpha: named once
        rows = tune_alpha(translator, sources, references, args.beam, args.alphas,
                          progress=lambda row: print(f"| {row['alpha']} | {row['bleu']} | {row['chrf']} |",
                                                     flush=True))
    report_truncation(sorted(set(cut)), str(args.src), 1, translator.max_src_len)
    best = best_row(rows)
    report = {"bundle": str(args.bundle), "src": str(args.src), "ref": str(args.ref), "beam": args.beam,
              "int8": args.int8, "rows": rows, "best_alpha": best["alpha"], "best_bleu": best["bleu"]}
    print(f"best alpha {best['alpha']} (BLEU {best['bleu']})")
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=2) + "\n")
    if args.write:
        path = write_bundle_alpha(args.bundle, best, args.src, args.beam)
        print(f"the bundle's default alpha is now {best['alpha']} ({path})")


def evaluate_held_out(model, corpus, src_sp, tgt_sp, max_len, limit=1000, inference=None) -> dict:
    """Greedy translation of (up to `limit`, None = all) held-out pairs: sacreBLEU,
    chrF, exact match, and how many sources were longer than `max_len` pieces (translated
    from their first `max_len`; counted, not warned about). `inference`: an
    `InferenceModel` of `model` to reuse."""
    from keras_attn.search import InferenceModel
    from pipelines.decode import translate_tf
    from pipelines.translate import collecting_truncations

    sources, refs = corpus.sources[:limit], corpus.targets[:limit]
    start = time.perf_counter()
    inference = InferenceModel(model) if inference is None else inference
    with collecting_truncations() as cut:
        hyps = translate_tf(inference, sources, src_sp, tgt_sp, max_len=max_len)
    seconds = time.perf_counter() - start
    return {
        "split": corpus.name, "sentences": len(sources), **score(hyps, refs),
        "truncated_sources": len(cut),
        "sentences_per_second": len(sources) / seconds,
        "examples": [{"source": s, "hypothesis": h, "reference": r}
                     for s, h, r in list(zip(sources, hyps, refs))[:5]],
    }
