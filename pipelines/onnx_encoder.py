"""The encoder as ONNX `LSTM` ops, put in front of the converted decode loops.

tf2onnx turns the encoder's masked `tf.while_loop`s into ONNX `Loop`s of ~30 small
ops per source position and direction. ONNX's `LSTM` op runs the same recurrence in
one kernel, and int8 quantization turns it into `DynamicQuantizeLSTM`. It reads
post-padded input with `sequence_lens` (outputs past a row's length are zero), so the
graph rolls each pre-padded row left by its padding, runs the layers, and rolls the
memory back: downstream, nothing changes.

    source_ids (batch, src_len) int32, pre-padded
      → memory (batch, src_len, units * directions), zeros at padding
        mask (batch, src_len) 0/1 float, final_h / final_c (batch, units * directions)

the inputs of `InferenceModel.*_from_encoding` (same names, so the two graphs join on
them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Keras packs LSTM gates as [i, f, g, o]; ONNX as [i, o, f, c] (c is Keras's g).
KERAS_TO_ONNX_GATES = [0, 3, 1, 2]
PREFIX = "fused_encoder/"


def onnx_gates(matrix: np.ndarray) -> np.ndarray:
    """Reorder the last axis's 4 gate blocks from Keras's order to ONNX's."""
    blocks = np.split(matrix, 4, axis=-1)
    return np.concatenate([blocks[k] for k in KERAS_TO_ONNX_GATES], axis=-1)


def lstm_initializers(rnn, layer: int) -> list[onnx.TensorProto]:
    """W `(dirs, 4H, in)`, R `(dirs, 4H, H)`, B `(dirs, 8H)` of one `MaskedLSTM`."""
    units, dirs = rnn.units, rnn.directions
    kernel = np.asarray(rnn.kernel.numpy(), np.float32)
    # |kernel| = (in, dirs * 4H), direction-major
    w = np.stack([onnx_gates(kernel[:, d * 4 * units:(d + 1) * 4 * units]).T for d in range(dirs)])
    r = np.stack([onnx_gates(np.asarray(rnn.recurrent_kernel.numpy()[d], np.float32)).T
                  for d in range(dirs)])
    input_bias = onnx_gates(np.asarray(rnn.bias.numpy(), np.float32))
    # ONNX adds an input and a recurrent bias; Keras has one.
    b = np.concatenate([input_bias, np.zeros_like(input_bias)], axis=-1)
    return [numpy_helper.from_array(array, f"{PREFIX}lstm_{layer}_{name}")
            for name, array in (("W", w), ("R", r), ("B", b))]


def constant(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), f"{PREFIX}{name}")


def encoder_model(encoder, opset: int) -> onnx.ModelProto:
    """The ONNX graph of `encoder.encode` (inference: no dropout) for `encoder`'s weights."""
    if opset < 13:  # ReduceSum and Unsqueeze take their axes as inputs from opset 13
        raise ValueError(f"opset {opset}: the encoder graph needs opset 13 or later")
    embeddings = np.asarray(encoder.embedding.embeddings.numpy(), np.float32)
    inits = [numpy_helper.from_array(embeddings, f"{PREFIX}embeddings"), constant("pad", np.int32(encoder.pad_id)),
             constant("zero", np.int64(0)), constant("one", np.int64(1)), constant("axis1", np.array([1], np.int64)),
             constant("axis2", np.array([2], np.int64)), constant("flat", np.array([0, 0, -1], np.int64))]
    nodes = embedding_nodes()
    x = f"{PREFIX}x_0"
    for layer, rnn in enumerate(encoder.rnns):
        inits += lstm_initializers(rnn, layer)
        nodes += lstm_nodes(rnn, layer, x)
        x = f"{PREFIX}x_{layer + 1}"
    nodes += output_nodes(x, last_layer=len(encoder.rnns) - 1)
    width = encoder.output_dim
    graph = helper.make_graph(
        nodes, "fused_encoder",
        [helper.make_tensor_value_info("source_ids", TensorProto.INT32, ["batch", "src_len"])],
        [helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["batch", "src_len", width]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "src_len"]),
         helper.make_tensor_value_info("final_h", TensorProto.FLOAT, ["batch", width]),
         helper.make_tensor_value_info("final_c", TensorProto.FLOAT, ["batch", width])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def embedding_nodes() -> list[onnx.NodeProto]:
    """`source_ids` (pre-padded) → the 0/1 `mask`, the lengths, and `x_0`: the sources
    post-padded (as the ONNX `LSTM` reads them), embedded, time-major."""
    p, node = PREFIX, helper.make_node
    return [
        node("Equal", ["source_ids", f"{p}pad"], [f"{p}is_pad"]),
        node("Not", [f"{p}is_pad"], [f"{p}is_real"]),
        node("Cast", [f"{p}is_real"], ["mask"], to=TensorProto.FLOAT),
        node("Cast", [f"{p}is_real"], [f"{p}real64"], to=TensorProto.INT64),
        node("ReduceSum", [f"{p}real64", f"{p}axis1"], [f"{p}lengths"], keepdims=0),
        # |lengths| = (batch,)
        node("Cast", [f"{p}lengths"], [f"{p}lengths32"], to=TensorProto.INT32),
        node("Shape", ["source_ids"], [f"{p}shape"]),
        node("Gather", [f"{p}shape", f"{p}one"], [f"{p}src_len"]),
        node("Range", [f"{p}zero", f"{p}src_len", f"{p}one"], [f"{p}positions"]),
        node("Unsqueeze", [f"{p}positions", f"{p}zero"], [f"{p}positions_row"]),
        node("Unsqueeze", [f"{p}lengths", f"{p}axis1"], [f"{p}lengths_col"]),
        node("Sub", [f"{p}src_len", f"{p}lengths_col"], [f"{p}padding_col"]),
        # Post-padded position t reads pre-padded position (t + padding) mod src_len;
        # pre-padded position s reads post-padded (s + length) mod src_len.
        node("Add", [f"{p}positions_row", f"{p}padding_col"], [f"{p}to_post_unwrapped"]),
        node("Mod", [f"{p}to_post_unwrapped", f"{p}src_len"], [f"{p}to_post"]),
        node("Add", [f"{p}positions_row", f"{p}lengths_col"], [f"{p}to_pre_unwrapped"]),
        node("Mod", [f"{p}to_pre_unwrapped", f"{p}src_len"], [f"{p}to_pre"]),
        # |to_post| = |to_pre| = (batch, src_len)
        node("GatherElements", ["source_ids", f"{p}to_post"], [f"{p}post_ids"], axis=1),
        node("Gather", [f"{p}embeddings", f"{p}post_ids"], [f"{p}embedded"]),
        node("Transpose", [f"{p}embedded"], [f"{p}x_0"], perm=[1, 0, 2]),
        # |x_0| = (src_len, batch, emb): time-major, as the LSTM op reads it
    ]


def lstm_nodes(rnn, layer: int, x: str) -> list[onnx.NodeProto]:
    """Encoder layer `layer` as one ONNX `LSTM` over `x`; its output is `x_{layer + 1}`."""
    p, node = PREFIX, helper.make_node
    names = [f"{p}lstm_{layer}_{n}" for n in ("W", "R", "B")]
    y, y_h, y_c = (f"{p}lstm_{layer}_{n}" for n in ("Y", "Y_h", "Y_c"))
    return [
        node("LSTM", [x, *names, f"{p}lengths32"], [y, y_h, y_c], hidden_size=rnn.units,
             direction="bidirectional" if rnn.bidirectional else "forward"),
        # |Y| = (src_len, dirs, batch, units) → (src_len, batch, dirs * units)
        node("Transpose", [y], [f"{y}_t"], perm=[0, 2, 1, 3]),
        node("Reshape", [f"{y}_t", f"{p}flat"], [f"{p}x_{layer + 1}"]),
    ]


def output_nodes(x: str, last_layer: int) -> list[onnx.NodeProto]:
    """The last layer's output `x` back to pre-padded batch-major `memory`, and its
    final states as `final_h` and `final_c`."""
    p, node = PREFIX, helper.make_node
    nodes = [
        node("Transpose", [x], [f"{p}memory_post"], perm=[1, 0, 2]),
        node("Unsqueeze", [f"{p}to_pre", f"{p}axis2"], [f"{p}to_pre_3d"]),
        node("Shape", [f"{p}memory_post"], [f"{p}memory_shape"]),
        node("Expand", [f"{p}to_pre_3d", f"{p}memory_shape"], [f"{p}to_pre_expanded"]),
        node("GatherElements", [f"{p}memory_post", f"{p}to_pre_expanded"], ["memory"], axis=1),
    ]
    for state in ("h", "c"):  # (dirs, batch, units) → (batch, dirs * units), forward first
        nodes += [node("Transpose", [f"{p}lstm_{last_layer}_Y_{state}"], [f"{p}final_{state}_t"], perm=[1, 0, 2]),
                  node("Flatten", [f"{p}final_{state}_t"], [f"final_{state}"], axis=1)]
    return nodes


def with_encoder(decoder: onnx.ModelProto, encoder: onnx.ModelProto) -> onnx.ModelProto:
    """One graph: `encoder`'s outputs feed `decoder`'s inputs of the same names."""
    from onnx import compose

    joined = {o.name for o in encoder.graph.output} & {i.name for i in decoder.graph.input}
    encoder = helper.make_model(encoder.graph, opset_imports=list(decoder.opset_import),
                                ir_version=decoder.ir_version)
    merged = compose.merge_models(encoder, decoder, io_map=[(name, name) for name in sorted(joined)])
    # merge_models lists both models' (equal) opset imports; the quantizer wants each once.
    del merged.opset_import[:]
    merged.opset_import.extend(decoder.opset_import)
    return merged
