"""How far mixed-bfloat16 gradients are from float32 ones, per weight, and whether the
error is noise (averages out over batches) or a bias (Adam follows it).

    python benchmarks/bf16_gradients.py --train-dir runs/m30k_v4k [--batches 24] [--name bf16_gradients]

Takes a trained model's weights, `--batches` real training batches of the recipe's
pipeline (dropout off, so both precisions see the same function), and computes the
label-smoothed loss's gradients in float32 and in mixed bfloat16, for the model as it
is (`Generator` output layer) and with a Keras `Dense` generator (what the decoder
used before; its bias gradient is `BiasAddGrad`, a bfloat16 sum on CPU). Per weight:

- `rel err`: mean over batches of |g_bf16 − g_f32| / |g_f32|;
- `err alignment`: |Σ_b err_b| / sqrt(Σ_b |err_b|²), ~1 when the batches' errors are
  unrelated (noise), up to sqrt(batches) when they all point the same way (a bias);
- `mean-gradient err`: |Σ_b err_b| / |Σ_b g_f32,b|, the error of the gradient averaged
  over the batches, relative to that average (what an optimizer follows).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import DEFAULT_DATA, recipe_config, write_results  # noqa: E402


def gradients(model, batches, loss_fn):
    """Per batch, every trainable weight's gradient as float64 NumPy."""
    import tensorflow as tf

    @tf.function
    def one(inputs, target):
        with tf.GradientTape() as tape:
            loss = loss_fn(target, model(inputs, training=False))
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

    return [[g.numpy().astype("float64") for g in one(inputs, target)] for inputs, target in batches]


def build(config, weights, policy, dense_generator=False):
    import keras

    from keras_attn.model import Seq2Seq

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = Seq2Seq(config)
        if dense_generator:  # the output layer before `Generator`
            model.decoder.generator = keras.layers.Dense(config.tgt_vocab_size, name="generator")
        model.build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.set_weights(weights)
    return model


def compare(names, got, want):
    import numpy as np

    def alignment(xs):
        return np.linalg.norm(sum(xs)) / np.sqrt(sum(np.linalg.norm(x) ** 2 for x in xs))

    rows = []
    for i, name in enumerate(names):
        errors = [g[i] - w[i] for g, w in zip(got, want, strict=True)]
        grads = [w[i] for w in want]
        rows.append({"weight": name,
                     "rel err": round(float(np.mean([np.linalg.norm(e) / np.linalg.norm(g)
                                                     for e, g in zip(errors, grads, strict=True)])), 4),
                     "err alignment": round(float(alignment(errors)), 2),
                     "gradient alignment": round(float(alignment(grads)), 2),
                     "mean-gradient err": round(float(np.linalg.norm(sum(errors)) / np.linalg.norm(sum(grads))), 4)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-dir", required=True, help="a training run folder (model.keras, *.spm.model)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--name", default="bf16_gradients", help="results file name (results/NAME.json, .md)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from keras_attn.model import MaskedSparseCrossEntropy
    from keras_attn.saving import load_model
    from pipelines.corpus import load_multi30k
    from pipelines.dataset import make_dataset
    from pipelines.train import batching_config

    run = Path(args.train_dir)
    trained = load_model(run / "model.keras")
    config, weights = trained.config, trained.get_weights()
    cfg = recipe_config(data_dir=args.data_dir)
    train = load_multi30k(args.data_dir, cfg.src_lang, cfg.tgt_lang)["train"]
    source_model, target_model = (run / "src.spm.model").read_bytes(), (run / "tgt.spm.model").read_bytes()
    dataset = make_dataset(train, source_model, target_model, batching_config(cfg), training=True, seed=5)
    batches = list(dataset.take(args.batches))
    loss_fn = MaskedSparseCrossEntropy(config.pad_id, cfg.label_smoothing)

    reference = build(config, weights, "float32")
    names = [v.path.split("/", 1)[-1] for v in reference.trainable_variables]
    want = gradients(reference, batches, loss_fn)
    rows = []
    for label, dense in (("Generator (current)", False), ("Dense generator (before)", True)):
        got = gradients(build(config, weights, "mixed_bfloat16", dense_generator=dense), batches, loss_fn)
        rows += [{"bf16 model": label, **row} for row in compare(names, got, want)]
        print(f"{label}: generator bias mean-gradient err {rows[-1]['mean-gradient err']}", flush=True)
    write_results(args.name, rows, {
        "weights": f"{run}/model.keras", "batches": f"{args.batches} training batches of the recipe's pipeline "
        f"({cfg.batch_tokens} tokens, seed 5), dropout off", "loss": f"label smoothing {cfg.label_smoothing}",
        "alignment": f"1 = unrelated errors, {args.batches ** 0.5:.2f} = all alike (sqrt of the batches)"})


if __name__ == "__main__":
    main()
