"""The `keras-attn` command line.

Heavy imports (TensorFlow) happen inside the sub-commands, so `--help`, `translate`
and `attention` start fast and the last two never import TensorFlow; `translate`
needs only the deployment packages (onnxruntime, sentencepiece, numpy). The commands
that use TensorFlow import it first, in `run_command`, without the INFO lines its
libraries print while they load (`import_quietly`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

import keras_attn  # light: its layers load lazily
from keras_attn.files import NO_ROOM, file_in_the_way, folder_problem

EXIT_FAILURE = 1  # the input was fine, the machine was not (a full disk)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a Unix tool killed by a closed pipe exits with
EXIT_TERMINATED = 143  # 128 + SIGTERM
# The modules of the `train` extra (pyproject.toml). A deployment installs keras-attn
# without it: `translate` works, the other commands say what to install.
TRAINING_MODULES = ("tensorflow", "keras", "tensorflow_text", "tf2onnx", "onnx", "sacrebleu", "babel",
                    "matplotlib", "tensorboard", "yaml")


def length_penalty(text):
    """A beam length penalty alpha: a finite number >= 0 (0 = none)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def positive_int(text, minimum=1):
    from pipelines.config import integer_kind

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {integer_kind(minimum)}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {integer_kind(minimum)}, got {value}")
    return value


def beam_width(text):
    """A beam size: a positive integer up to `MAX_BEAM` (wider beams ran out of memory)."""
    from keras_attn.config import MAX_BEAM

    value = positive_int(text)
    if value > MAX_BEAM:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BEAM}, got {value}")
    return value


def non_negative_int(text):
    return positive_int(text, minimum=0)


def bool_flag(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def check_output_file(path: str | None, flag: str) -> None:
    """Refuse an output file that cannot be written before the work that makes it."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{flag} {path}: is a folder, not a file")
    if target.exists() and not target.is_file():  # /dev/stdout, a pipe: written in place
        return
    folder = target.resolve().parent
    if not folder.is_dir():  # refused: no need to try writing there
        if problem := file_in_the_way(target.parent):  # was "folder ... does not exist"
            raise NotADirectoryError(f"{flag} {path}: {problem}")
        raise FileNotFoundError(f"{flag} {path}: folder {target.parent} does not exist")
    if problem := folder_problem(folder):  # a folder the user may not write
        raise PermissionError(f"{flag} {path}: {problem}")


def note_ignored_alpha(args, beam: int) -> None:
    """`--alpha` is the beam's length penalty: say so when greedy decoding ignores it."""
    if args.alpha is not None and beam == 1:
        print(f"keras-attn {args.command}: note: --alpha has no effect with greedy decoding (--beam 1)",
              file=sys.stderr)


# ------------------------------------------------------------------- train
def add_train(sub):
    from pipelines.config import TrainConfig, flag

    p = sub.add_parser("train", help="train a model (default: the built-in dates demo)",
                       description="Train an attention seq2seq model. Values come from the defaults, then "
                                   "--config FILE (YAML or JSON with the same keys), then flags. A killed run "
                                   "resumes from its last finished epoch when the same command runs again, "
                                   "drawing the batch orders and dropout masks an uninterrupted run draws.")
    p.add_argument("--config", help="YAML/JSON file with training keys (e.g. configs/multi30k_deen.yaml)")
    for field in dataclasses.fields(TrainConfig):
        # the field's help and default; the value is checked again, as a config file's is, by validate()
        default = "" if field.default is None else f" (default {field.default})"
        help = (field.metadata["help"] + default).replace("%", "%%")
        kind, options = str(field.type), {}
        if "bool" in kind:
            options = {"type": bool_flag, "metavar": "true|false"}
        elif "int" in kind:
            options = {"type": positive_int if field.metadata["minimum"] == 1 else non_negative_int}
        elif "float" in kind:
            options = {"type": float}
        elif field.metadata["choices"]:
            options = {"metavar": "{" + ",".join(field.metadata["choices"]) + "}"}
        p.add_argument(flag(field.name), default=argparse.SUPPRESS, help=help, **options)
    p.set_defaults(handler=cmd_train)


def cmd_train(args):
    from pipelines.config import TrainConfig
    from pipelines.train import run

    values = TrainConfig.from_file(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k not in ("config", "handler", "command")})
    if "batch_tokens" in values and "batch_size" not in values:
        values["batch_size"] = None
    run(TrainConfig(**values))


# ------------------------------------------------------------------ export
def add_export(sub):
    p = sub.add_parser("export", help="export a trained model to an ONNX bundle")
    p.add_argument("train_dir", help="folder written by `keras-attn train`")
    p.add_argument("--out", help="bundle folder (default exported/<train_dir name>)")
    p.add_argument("--beam", type=beam_width, default=5,
                   help="beam size the export checks against TensorFlow and records in config.json "
                        "(translate, evaluate and Translator default to greedy; default %(default)s)")
    p.add_argument("--alpha", type=length_penalty, default=0.6,
                   help="beam length penalty recorded in the bundle "
                        "(default %(default)s; `tune-alpha` picks one)")
    p.add_argument("--quantize", choices=["int8"], help="also write int8 dynamically quantized graphs")
    p.add_argument("--opset", type=positive_int, default=17,
                   help="ONNX opset of the graphs: 16 up to the newest tf2onnx converts (18 in tf2onnx 1.17; "
                        "default %(default)s)")
    p.add_argument("--max-len", type=positive_int, help="max source/target tokens (default: training max_len)")
    p.set_defaults(handler=cmd_export)


def cmd_export(args):
    from pipelines.export import export

    out = args.out or str(Path("exported") / Path(args.train_dir).resolve().name)
    export(args.train_dir, out, beam=args.beam, alpha=args.alpha, quantize=args.quantize,
           opset=args.opset, max_len=args.max_len)


# --------------------------------------------------------------- translate
def add_translate(sub):
    p = sub.add_parser("translate", help="translate lines with an exported bundle (onnxruntime, no TensorFlow)")
    p.add_argument("bundle", help="export folder")
    p.add_argument("--beam", type=beam_width, help="beam size (default 1 = greedy; with --n-best N, N)")
    p.add_argument("--n-best", type=beam_width, metavar="N",
                   help="the N best translations of each line, best first, one per output line as "
                        "LINE<TAB>LOG-PROB<TAB>TRANSLATION (LINE = input line number); needs --beam >= N")
    p.add_argument("--max-len", type=positive_int,
                   help="max output tokens (default: 2 x the source's tokens + 10, "
                        "within the bundle's limit)")
    p.add_argument("--int8", action="store_true", help="use the int8 quantized graph")
    p.add_argument("--input", help="input file (default stdin)")
    p.add_argument("--output", help="output file (default stdout)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="sentences per onnxruntime call (default %(default)s)")
    p.add_argument("--alpha", type=length_penalty, help="beam length penalty (default: the bundle's)")
    p.add_argument("--line-buffered", action="store_true",
                   help="answer each stdin line on stdout as it arrives, for a program that writes a line and "
                        "waits for its translation (a terminal gets this anyway; otherwise lines are read "
                        "8 x --batch-size at a time)")
    p.set_defaults(handler=cmd_translate)


def cmd_translate(args):
    from pipelines.translate import translate_stream

    beam = args.beam or args.n_best or 1
    if args.n_best and beam < args.n_best:
        raise ValueError(f"--n-best {args.n_best} needs --beam {args.n_best} or more, got --beam {beam}")
    if args.line_buffered and (args.input or args.output):
        raise ValueError("--line-buffered answers stdin on stdout; it takes no --input or --output")
    check_output_file(args.output, "--output")
    note_ignored_alpha(args, beam)
    translate_stream(args.bundle, args.input, args.output, beam=beam, max_len=args.max_len,
                     int8=args.int8, batch_size=args.batch_size, alpha=args.alpha if beam > 1 else None,
                     n_best=args.n_best or 0, line_buffered=args.line_buffered)


def add_attention(sub):
    p = sub.add_parser("attention", help="plot the attention weights of one translation")
    p.add_argument("bundle", help="export folder")
    p.add_argument("sentence", help="the source sentence")
    p.add_argument("--png", required=True, help="where to write the heatmap")
    p.add_argument("--beam", type=beam_width, default=1, help="beam size (1 = greedy)")
    p.set_defaults(handler=cmd_attention)


def cmd_attention(args):
    from pipelines.translate import attention_heatmap

    check_output_file(args.png, "--png")
    text = attention_heatmap(args.bundle, args.sentence, args.png, beam=args.beam)
    print(text)
    print(f"attention heatmap written to {args.png}", file=sys.stderr)


# ---------------------------------------------------------------- evaluate
def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="BLEU/chrF/exact match and speed of a bundle on a test set")
    p.add_argument("bundle", help="export folder")
    p.add_argument("--src", required=True, help="source sentences, one per line (.gz ok)")
    p.add_argument("--ref", required=True, help="reference translations, aligned with --src")
    p.add_argument("--beam", type=beam_width, default=1, help="beam size (default 1 = greedy)")
    p.add_argument("--runtime", choices=["onnx", "tf"], default="onnx",
                   help="onnx (default): the bundle's graphs; tf: the trained Keras model's search")
    p.add_argument("--alpha", type=length_penalty, help="beam length penalty (default: the bundle's)")
    p.add_argument("--int8", action="store_true", help="onnx runtime: use the int8 graph")
    p.add_argument("--train-dir", help="--runtime tf (required there): the training folder the bundle was exported from")
    p.add_argument("--json", help="write the report here as JSON")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args):
    from pipelines.evaluate import evaluate_command

    check_output_file(args.json, "--json")
    note_ignored_alpha(args, args.beam)
    evaluate_command(args)


def add_tune_alpha(sub):
    from pipelines.evaluate import ALPHAS  # light: no TensorFlow

    p = sub.add_parser("tune-alpha", help="choose the beam length penalty on a validation set")
    p.add_argument("bundle", help="export folder")
    p.add_argument("--src", required=True,
                   help="validation sources, one per line (.gz ok); never the test set")
    p.add_argument("--ref", required=True, help="their reference translations")
    p.add_argument("--beam", type=beam_width, default=5, help="beam size, 2 or more (default %(default)s)")
    p.add_argument("--alphas", type=length_penalty, nargs="+", default=list(ALPHAS),
                   metavar="A", help="length penalties to try (default %(default)s)")
    p.add_argument("--int8", action="store_true", help="use the int8 graph")
    p.add_argument("--write", action="store_true",
                   help="make the best alpha the bundle's default (config.json), for translate and evaluate")
    p.add_argument("--json", help="write the table here as JSON")
    p.set_defaults(handler=cmd_tune_alpha)


def cmd_tune_alpha(args):
    from pipelines.evaluate import tune_alpha_command

    check_output_file(args.json, "--json")
    tune_alpha_command(args)


def add_download(sub):
    p = sub.add_parser("download-multi30k", help="download the Multi30k task-1 raw files (needs internet)")
    p.add_argument("dest", help="folder to write the .gz files to")
    p.add_argument("--base-url", help="mirror of the raw files folder")
    p.set_defaults(handler=cmd_download)


def cmd_download(args):
    from pipelines.corpus import MULTI30K_URL, download_multi30k

    for path in download_multi30k(args.dest, base_url=args.base_url or MULTI30K_URL):
        print(f"downloaded {path}")


def add_demo(sub):
    from pipelines.config import TrainConfig

    p = sub.add_parser("demo", help="train the dates demo, export it, translate through onnxruntime")
    p.add_argument("--out", default="runs/dates", help="training folder (default %(default)s)")
    p.add_argument("--bundle", default="exported/dates", help="export folder (default %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=6, help="training epochs (default %(default)s)")
    p.add_argument("--pairs", type=positive_int, default=TrainConfig.dates_train_size,
                   help="generated training pairs (default %(default)s; fewer for a quicker, weaker model)")
    p.set_defaults(handler=cmd_demo)


def padded(text: str, columns: int) -> str:
    """`text` and the spaces that make it `columns` wide on a terminal, where East Asian
    wide characters take two columns (`f"{text:32s}"` counted them as one, and the
    Korean date's arrow stood three columns right of the others)."""
    import unicodedata

    width = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, columns - width)


DEMO_DATES = ["25 June 2009", "Donnerstag, 25. Juni 2009", "2009년 6월 25일", "6/25/09",
              "jeudi 25 juin 2009", "jueves, 25 de junio de 2009", "Sat 1 Jan 2000", "31.12.1999"]


def cmd_demo(args):
    from keras_attn.runtime import Translator
    from pipelines.config import TrainConfig
    from pipelines.export import check_output_folder, export
    from pipelines.train import run
    from pipelines.translate import attention_heatmap

    # The export replaces --bundle whole: refuse a folder it cannot have before the training, not after it.
    bundle, out = Path(args.bundle).resolve(), Path(args.out).resolve()
    if bundle == out or bundle in out.parents:
        raise ValueError(f"--bundle {args.bundle}: holds the training folder --out {args.out}, and the export "
                         "replaces the whole bundle folder; give them separate folders")
    check_output_folder(Path(args.bundle))
    metrics = run(TrainConfig(out=args.out, epochs=args.epochs, dates_train_size=args.pairs))
    export(args.out, args.bundle, quantize="int8")
    translator = Translator.load(args.bundle)
    print("\n[onnxruntime] translations by the exported model (no TensorFlow in this path):")
    for source, target in zip(DEMO_DATES, translator.translate(DEMO_DATES)):
        print(f"  {padded(source, 32)} -> {target}")
    png = Path(args.out) / "attention.png"
    attention_heatmap(args.bundle, DEMO_DATES[1], png)
    exact = metrics["held_out"]["exact_match"]
    print(f"\n[demo] held-out exact match {exact:.2%} (greedy); attention heatmap: {png}; bundle: {args.bundle}/")


def parser():
    p = argparse.ArgumentParser(
        prog="keras-attn",
        description="Luong-attention seq2seq: train with Keras, export to ONNX, translate with onnxruntime.")
    p.add_argument("--version", action="version", version=f"keras-attn {keras_attn.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_demo, add_train, add_export, add_translate, add_attention, add_evaluate, add_tune_alpha,
                add_download):
        add(sub)
    return p


class Terminated(BaseException):
    """SIGTERM (`kill`, `timeout`, a scheduler's stop), raised where the command is so
    that its clean-ups run as they do for Ctrl-C: the default action ended the process
    at once and left an output's temporary file or an export's staging folder behind."""


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises `Terminated` inside the block (the main thread only has signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# What TensorFlow's C++ libraries print while they load, before any log setting applies:
# absl's notice, then INFO lines ("oneDNN custom operations are on", "Could not find cuda
# drivers"), which TF_CPP_MIN_LOG_LEVEL does not reach (tensorflow/tensorflow#100442).
ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ABSL_INFO_LINE = re.compile(r"I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")


def uses_tensorflow(args) -> bool:
    """Whether the command's work loads TensorFlow (translate, attention, tune-alpha and
    `evaluate --runtime onnx` never do)."""
    return args.command in ("train", "export", "demo") or getattr(args, "runtime", None) == "tf"


def import_quietly(module: str) -> None:
    """Import `module` with its output to stderr passed on without the load-time INFO
    lines when TF_CPP_MIN_LOG_LEVEL hides INFO (1 or more, as the commands set it)."""
    if module not in sys.modules:
        with stderr_held():
            importlib.import_module(module)


@contextlib.contextmanager
def stderr_held():
    """Inside the block, stderr (the file descriptor, which C++ writes to) goes to a
    temporary file, passed on after it (`pass_on`): everything else, a failed import's
    output included, in its order. Without a stderr or a temporary folder, as it is."""
    saved = held = None
    with contextlib.suppress(OSError):
        saved = os.dup(2)
        held = tempfile.TemporaryFile()
    if held is None:
        if saved is not None:
            os.close(saved)
        yield
        return
    with held:
        sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            pass_on(held.read().decode("utf-8", "replace"))


def pass_on(text: str) -> None:
    """`text` to stderr, without absl's load-time notice and INFO lines if INFO is hidden."""
    drop_info = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip() not in ("", "0")
    for line in text.splitlines(keepends=True):
        if not (drop_info and (line.rstrip("\n") == ABSL_NOTICE or ABSL_INFO_LINE.match(line))):
            sys.stderr.write(line)
    sys.stderr.flush()


def main(argv=None):
    # TensorFlow's C++ log shows only fatal errors (3): at its default, a machine without a
    # GPU printed "E0000 ... failed call to cuInit: ... CUDA error" in every command that
    # ran TensorFlow, and export "oneDNN supports DT_BOOL only ...", errors that are none.
    # Real failures reach the command as Python exceptions. Set it yourself to see more.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = parser().parse_args(argv)
    with sigterm_raises():
        return run_command(args)


def run_command(args) -> int:
    """`args.handler(args)`; the exit status, with one line on stderr for what stopped it."""
    from pipelines.corpus import CorpusError

    try:
        if uses_tensorflow(args):
            import_quietly("tensorflow")
        args.handler(args)
    # Bad input of any kind (CorpusError and BundleError are ValueErrors): one line, status 2.
    except (CorpusError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError) as error:
        print(f"keras-attn {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as error:
        if not error.name or error.name.split(".")[0] not in TRAINING_MODULES:
            raise
        print(f"keras-attn {args.command}: error: needs the training packages (no module {error.name!r}); "
              "install them with: pip install 'keras-attn[train]'", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"keras-attn {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"keras-attn {args.command}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, as Unix tools do
        # stdout's unwritten rest goes nowhere, or the flush at exit would fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as error:  # after its subclasses above
        if error.errno not in NO_ROOM:
            raise
        print(f"keras-attn {args.command}: error: cannot write {error.filename or 'its output'}: "
              f"{error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
