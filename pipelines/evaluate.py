"""`keras-attn evaluate`: sacreBLEU, chrF, exact match and speed of a bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipelines.corpus import read_lines


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


def translate_with(runtime: str, bundle: str, sources: list[str], beam: int, int8: bool, train_dir: str | None,
                   alpha: float):
    if runtime == "onnx":
        from keras_attn.runtime import Translator

        translator = Translator.load(bundle, int8=int8)
        return lambda: translator.translate(sources, beam=beam, alpha=alpha)
    from keras_attn.search import InferenceModel
    from pipelines.decode import translate_tf
    from pipelines.export import load_training_run
    from pipelines.tokenizer import load_processor

    config = json.loads((Path(bundle) / "config.json").read_text(encoding="utf-8"))
    if train_dir is None:
        raise ValueError("--runtime tf needs --train-dir (the training folder of this bundle)")
    model, _, src_model, tgt_model = load_training_run(train_dir)
    inference = InferenceModel(model)
    src_sp, tgt_sp = load_processor(src_model), load_processor(tgt_model)
    return lambda: translate_tf(inference, sources, src_sp, tgt_sp, max_len=config["max_tgt_len"],
                                beam_size=beam, alpha=alpha)


def evaluate(bundle, src, ref, beam=1, runtime="onnx", int8=False, train_dir=None, alpha=None) -> dict:
    """`alpha`: the beam length penalty; `None` = the bundle's (`config.json`)."""
    sources, references = read_lines(src), read_lines(ref)
    if len(sources) != len(references):
        raise ValueError(f"misaligned test set: {src} has {len(sources):,} lines but {ref} has {len(references):,}")
    if alpha is None:
        alpha = json.loads((Path(bundle) / "config.json").read_text(encoding="utf-8"))["alpha"]
    run = translate_with(runtime, bundle, sources, beam, int8, train_dir, alpha)
    start = time.perf_counter()
    hypotheses = run()
    seconds = time.perf_counter() - start
    report = {
        "bundle": str(bundle), "runtime": runtime + ("-int8" if int8 else ""), "beam": beam,
        "alpha": alpha if beam > 1 else None,
        "src": str(src), "ref": str(ref), "sentences": len(sources),
        **score(hypotheses, references),
        "seconds": round(seconds, 3),
        "sentences_per_second": round(len(sources) / seconds, 1),
        "target_tokens_per_second": round(sum(len(h.split()) for h in hypotheses) / seconds, 1),
    }
    return report, hypotheses


def table(report: dict) -> str:
    keys = ["runtime", "beam", "sentences", "bleu", "chrf", "exact_match", "sentences_per_second"]
    rows = [f"| {k} | {report[k]:.4f} |" if isinstance(report[k], float) and k == "exact_match"
            else f"| {k} | {report[k]} |" for k in keys]
    return "\n".join(["| metric | value |", "| --- | --- |", *rows, f"\nBLEU: {report['bleu_signature']}",
                      f"chrF: {report['chrf_signature']}"])


def evaluate_command(args):
    report, _ = evaluate(args.bundle, args.src, args.ref, args.beam, args.runtime, args.int8, args.train_dir,
                         args.alpha)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
