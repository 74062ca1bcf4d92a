"""OpenNMT-py with the keras-attn recipe on Multi30k De→En, beside a keras-attn bundle.

    bash benchmarks/opennmt/run.sh        # OpenNMT-py in its own venv, trained for 82 min
    python benchmarks/opennmt_baseline.py --run runs/opennmt --bundle exported/m30k_bt256head

`run.sh` trains OpenNMT-py 3.5.1 (PyTorch) on the recipe's architecture,
hyper-parameters and SentencePiece models (`opennmt/multi30k_deen.yaml`) for the wall
time the recipe's sixth run trained. This script takes the checkpoint with the lowest
validation perplexity (validation only), translates test2016 with `onmt_translate`
(greedy and beam 5 at OpenNMT-py's default length penalty, batches of 64 sentences)
and scores it with sacreBLEU; greedy sentences/s is the median of 3 passes after a
warm-up pass, beam 5 one pass; each pass is timed from OpenNMT-py's own log (from "Loading data into the model"
to "PRED SCORE": tokenization, batching, search and detokenization; the checkpoint's
loading is left out). Training target tokens/s is the median of `onmt_train`'s reports
(its first report, which includes start-up, left out). The bundle's rows are
translated and timed the same way with the `Translator` (onnxruntime, no TensorFlow;
beam 5 at the bundle's length penalty).
The tests run the log parsing, the command line `compare` (with a stand-in for
OpenNMT-py's rows) and `run.sh` (with stand-ins for OpenNMT-py's programs): OpenNMT-py
itself needs PyTorch, which the project does not install.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import bleu, median_rate, write_results  # noqa: E402
from significance import save_hypotheses  # noqa: E402

from pipelines.corpus import read_lines  # noqa: E402

BATCH_SIZE = 64
STAMP = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO\] "


def validation_perplexities(train_log: str) -> dict[int, float]:
    """{checkpoint step: validation perplexity} from `onmt_train`'s log, where each
    validation is followed by the checkpoint it saves."""
    found, pending = {}, None
    for line in train_log.splitlines():
        if match := re.search(r"Validation perplexity: ([\d.]+)", line):
            pending = float(match.group(1))
        elif (match := re.search(r"Saving checkpoint .*_step_(\d+)\.pt", line)) and pending is not None:
            found[int(match.group(1))], pending = pending, None
    return found


def training_tokens_per_second(train_log: str) -> list[float]:
    """The target tokens/s of each of `onmt_train`'s reports ("src/tgt tok/s")."""
    return [float(tgt) for _, tgt in re.findall(r"(\d+)/\s*(\d+) tok/s", train_log)]


def translation_seconds(translate_log: str) -> float:
    """Seconds from "Loading data into the model" to "PRED SCORE" in `onmt_translate`'s log."""
    def stamp(event):
        match = re.search(STAMP + re.escape(event), translate_log)
        if match is None:
            raise ValueError(f"onmt_translate's log has no {event!r} line")
        return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")

    return (stamp("PRED SCORE") - stamp("Loading data into the model")).total_seconds()


def onmt_translate(onmt_bin: Path, checkpoint: Path, source: Path, spm: Path, beam: int) -> tuple[list[str], float]:
    """(translations, seconds) of `source` by `onmt_translate`."""
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "hyp.txt"
        done = subprocess.run([str(onmt_bin / "onmt_translate"), "-model", str(checkpoint), "-src", str(source),
                               "-output", str(output), "-beam_size", str(beam), "-batch_size", str(BATCH_SIZE),
                               "-batch_type", "sents", "-transforms", "sentencepiece",
                               "-src_subword_model", str(spm / "src.spm.model"),
                               "-tgt_subword_model", str(spm / "tgt.spm.model")],
                              capture_output=True, text=True, check=True)
        return read_lines(output), translation_seconds(done.stderr + done.stdout)


def row(system: str, search: str, outputs: list[str], refs: list[str], rate: float) -> dict:
    return {"system": system, "search": search, "BLEU": bleu(outputs, refs), "sentences/s": round(rate, 1)}


def opennmt_rows(run: Path, bundle: Path, data: Path, refs: list[str]) -> tuple[list[dict], dict, dict]:
    train_log = (run / "train.log").read_text(encoding="utf-8")
    perplexities = validation_perplexities(train_log)
    if not perplexities:
        raise SystemExit(f"{run / 'train.log'}: no validation with a saved checkpoint yet")
    step = min(perplexities, key=perplexities.get)
    checkpoint, onmt_bin, source = run / f"model_step_{step}.pt", run / "venv" / "bin", data / "test_2016_flickr.de"
    onmt_translate(onmt_bin, checkpoint, source, bundle, beam=1)  # warm-up (disk cache)
    greedy = [onmt_translate(onmt_bin, checkpoint, source, bundle, beam=1) for _ in range(3)]
    beam, beam_seconds = onmt_translate(onmt_bin, checkpoint, source, bundle, beam=5)
    rate = statistics.median(len(refs) / seconds for _, seconds in greedy)
    reports = training_tokens_per_second(train_log)[1:]
    system = "OpenNMT-py 3.5.1 (PyTorch)"
    facts = {"OpenNMT-py checkpoint": f"step {step} of {max(perplexities)} (validation perplexity "
                                      f"{perplexities[step]}, the lowest of {len(perplexities)})",
             "OpenNMT-py training target tok/s": f"median {statistics.median(reports):,.0f} of {len(reports)} reports "
                                                 f"({min(reports):,.0f}-{max(reports):,.0f})"}
    outputs = {"greedy": greedy[0][0], "beam 5": beam}
    return [row(system, "greedy", greedy[0][0], refs, rate),
            row(system, "beam 5", beam, refs, len(refs) / beam_seconds)], facts, outputs


def bundle_rows(bundle: Path, sources: list[str], refs: list[str]) -> list[dict]:
    from keras_attn.runtime import Translator

    translator = Translator.load(bundle)
    system = f"keras-attn {bundle.name} (onnxruntime fp32)"
    outputs, rate = median_rate(lambda batch: translator.translate(batch, batch_size=BATCH_SIZE), sources)
    start = time.perf_counter()
    beam = translator.translate(sources, beam=5, batch_size=BATCH_SIZE)
    beam_rate = len(sources) / (time.perf_counter() - start)
    return [row(system, "greedy", outputs, refs, rate), row(system, "beam 5", beam, refs, beam_rate)]


def compare(argv, doc: str, framework: str, name: str, framework_rows) -> None:
    """The command line the baselines share (`NAME_baseline.py`, reading `runs/NAME` by
    default): `framework_rows(run, bundle, data, refs)` gives the other framework's rows,
    notes and test2016 outputs ({"greedy": [...], "beam 5": [...]}), then the bundle's
    rows follow, timed beside them; `doc`: the script's docstring, whose first line
    describes it. The outputs are saved where `significance.py --split test2016 --system
    RESULTS_NAME=saved` reads them, so a paired test can set them against the bundle's."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--run", default=f"runs/{name}", help="the folder run.sh wrote")
    parser.add_argument("--bundle", default="exported/m30k_bt256head",
                        help=f"the keras-attn bundle (its SentencePiece models are the ones {framework} used)")
    parser.add_argument("--name", default=f"{name}_baseline")
    args = parser.parse_args(argv)
    run, bundle = Path(args.run), Path(args.bundle)
    data = run / "data"
    sources, refs = read_lines(data / "test_2016_flickr.de"), read_lines(data / "test_2016_flickr.en")
    rows, notes, outputs = framework_rows(run, bundle, data, refs)
    for search, hypotheses in outputs.items():
        save_hypotheses("test2016", args.name, search, hypotheses)
    rows += bundle_rows(bundle, sources, refs)
    notes["command"] = f"python benchmarks/{name}_baseline.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_results(args.name, rows, notes)


def main(argv=None):
    compare(argv, __doc__, "OpenNMT-py", "opennmt", opennmt_rows)


if __name__ == "__main__":
    main()
