"""ONNX graphs of the scoring path, built from numpy weights (needs ``onnx``, not torch).

Graphs (opset 17, IR 8, float32, batch and width dimensions symbolic):
- ``dot``: users (B, w), items_t (w, n) -> scores (B, n). LightGCN and NGCF scoring, NCF's GMF
  half; the scorer runs it once per width bucket.
- ``ngcf_layer_k``: side (N, d), ego (N, d) -> ego_next (N, d), normalized (N, d), with
  side = L·ego computed outside (sparse); the layer's weights are initializers.
- ``ncf_user``: mlp (U, d), gmf (U, d) -> user_part (U, h1), user_gmf (U, d): the tower's first
  layer on the user half (with its bias) and the GMF vector scaled by its prediction weight.
- ``ncf_item``: mlp (I, d) -> item_part (I, h1): the first layer on the item half.
- ``ncf_tower``: user_part (B, h1), item_part (I, h1) -> scores (B, I): ReLU, the remaining tower
  layers and the MLP half of the prediction, plus the prediction bias.
- ``topk``: scores (B, n), k (1,) int64 -> values (B, k), indices (B, k), largest first. Every
  backbone's artifact has it (since ciess 0.1.0's second release; older artifacts lack it and the
  scorer falls back to numpy): onnxruntime's TopK is 10-15x faster than ``np.argpartition`` over
  tens of thousands of items.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
FloatArray = npt.NDArray[np.float32]


def _value(name: str, shape: Sequence[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _initializer(name: str, array: npt.ArrayLike) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ciess"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def topk_graph() -> onnx.ModelProto:
    """values, indices = TopK(scores, k) along the items, largest first (ties: lower index)."""
    return _model(
        "topk",
        [
            helper.make_node(
                "TopK", ["scores", "k"], ["values", "indices"], axis=1, largest=1, sorted=1
            )
        ],
        [
            _value("scores", ["batch", "items"]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            _value("values", ["batch", "k"]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["batch", "k"]),
        ],
        [],
    )


def dot_graph() -> onnx.ModelProto:
    """scores = users @ items_t."""
    return _model(
        "dot",
        [helper.make_node("MatMul", ["users", "items_t"], ["scores"])],
        [_value("users", ["batch", "width"]), _value("items_t", ["width", "items"])],
        [_value("scores", ["batch", "items"])],
        [],
    )


def ngcf_layer_graph(
    sum_weight: FloatArray,
    sum_bias: FloatArray,
    product_weight: FloatArray,
    product_bias: FloatArray,
) -> onnx.ModelProto:
    """One NGCF layer in eval mode (no dropout).

    ego_next = LeakyReLU_0.2(side W1ᵀ + b1 + (side ⊙ ego) W2ᵀ + b2) and
    normalized = ego_next / max(‖ego_next‖₂, 1e-12), with W1, W2 (d_out, d_in) as in
    ``torch.nn.Linear``.
    """
    nodes = [
        helper.make_node("Gemm", ["side", "sum_weight", "sum_bias"], ["summed"], transB=1),
        helper.make_node("Mul", ["side", "ego"], ["interaction"]),
        helper.make_node(
            "Gemm", ["interaction", "product_weight", "product_bias"], ["product"], transB=1
        ),
        helper.make_node("Add", ["summed", "product"], ["pre_activation"]),
        helper.make_node("LeakyRelu", ["pre_activation"], ["ego_next"], alpha=0.2),
        helper.make_node("ReduceL2", ["ego_next"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "epsilon"], ["safe_norm"]),
        helper.make_node("Div", ["ego_next", "safe_norm"], ["normalized"]),
    ]
    return _model(
        "ngcf_layer",
        nodes,
        [
            _value("side", ["nodes", sum_weight.shape[1]]),
            _value("ego", ["nodes", sum_weight.shape[1]]),
        ],
        [
            _value("ego_next", ["nodes", sum_weight.shape[0]]),
            _value("normalized", ["nodes", sum_weight.shape[0]]),
        ],
        [
            _initializer("sum_weight", sum_weight),
            _initializer("sum_bias", sum_bias),
            _initializer("product_weight", product_weight),
            _initializer("product_bias", product_bias),
            _initializer("epsilon", np.asarray([1e-12])),
        ],
    )


def ncf_user_graph(
    first_weight_user: FloatArray, first_bias: FloatArray, gmf_weight: FloatArray
) -> onnx.ModelProto:
    """user_part = mlp W1uᵀ + b1 (W1u: (h1, d)); user_gmf = gmf ⊙ w_gmf (w_gmf: (d,))."""
    h1, width = first_weight_user.shape
    nodes = [
        helper.make_node("Gemm", ["mlp", "first_weight", "first_bias"], ["user_part"], transB=1),
        helper.make_node("Mul", ["gmf", "gmf_weight"], ["user_gmf"]),
    ]
    return _model(
        "ncf_user",
        nodes,
        [_value("mlp", ["users", width]), _value("gmf", ["users", width])],
        [_value("user_part", ["users", h1]), _value("user_gmf", ["users", width])],
        [
            _initializer("first_weight", first_weight_user),
            _initializer("first_bias", first_bias),
            _initializer("gmf_weight", gmf_weight),
        ],
    )


def ncf_item_graph(first_weight_item: FloatArray) -> onnx.ModelProto:
    """item_part = mlp W1iᵀ (W1i: (h1, d), no bias: the user half carries it)."""
    h1, width = first_weight_item.shape
    return _model(
        "ncf_item",
        [helper.make_node("MatMul", ["mlp", "first_weight_t"], ["item_part"])],
        [_value("mlp", ["items", width])],
        [_value("item_part", ["items", h1])],
        [_initializer("first_weight_t", first_weight_item.T)],
    )


def ncf_tower_graph(
    layers: Sequence[tuple[FloatArray, FloatArray]],
    mlp_weight: FloatArray,
    predict_bias: float,
) -> onnx.ModelProto:
    """scores[b, i] = w_mlpᵀ tower(ReLU(user_part[b] + item_part[i])) + bias.

    The (B, I, h1) pairs are flattened to (B·I, h1) rows, every layer is one Gemm with its bias,
    and the scores are shaped back to (B, I) (why Gemm: docs/benchmarks/ncf-tower-graph.md).

    Args:
        layers: (weight (out, in), bias (out,)) of the tower layers after the first.
        mlp_weight: (h_last,) the prediction weights on the tower's output.
        predict_bias: the prediction bias.
    """
    h1 = layers[0][0].shape[1] if layers else mlp_weight.shape[0]
    nodes = [
        helper.make_node("Unsqueeze", ["user_part", "axis_1"], ["user_3d"]),
        helper.make_node("Unsqueeze", ["item_part", "axis_0"], ["item_3d"]),
        helper.make_node("Add", ["user_3d", "item_3d"], ["pair"]),
        helper.make_node("Relu", ["pair"], ["pair_hidden"]),
        helper.make_node("Reshape", ["pair_hidden", "rows_shape"], ["hidden_0"]),
        helper.make_node("Shape", ["pair"], ["pair_shape"]),
        helper.make_node("Slice", ["pair_shape", "axis_0", "axis_2"], ["scores_shape"]),
    ]
    initializers = [
        numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axis_1"),
        numpy_helper.from_array(np.asarray([0], dtype=np.int64), "axis_0"),
        numpy_helper.from_array(np.asarray([2], dtype=np.int64), "axis_2"),
        numpy_helper.from_array(np.asarray([-1, h1], dtype=np.int64), "rows_shape"),
    ]
    for index, (weight, bias) in enumerate(layers):
        nodes += [
            helper.make_node(
                "Gemm",
                [f"hidden_{index}", f"weight_{index}", f"bias_{index}"],
                [f"affine_{index}"],
                transB=1,
            ),
            helper.make_node("Relu", [f"affine_{index}"], [f"hidden_{index + 1}"]),
        ]
        initializers += [
            _initializer(f"weight_{index}", weight),
            _initializer(f"bias_{index}", bias),
        ]
    last = f"hidden_{len(layers)}"
    nodes += [
        helper.make_node("Gemm", [last, "mlp_weight", "predict_bias"], ["row_scores"], transB=1),
        helper.make_node("Reshape", ["row_scores", "scores_shape"], ["scores"]),
    ]
    initializers += [
        _initializer("mlp_weight", np.asarray(mlp_weight).reshape(1, -1)),
        _initializer("predict_bias", np.asarray([predict_bias])),
    ]
    return _model(
        "ncf_tower",
        nodes,
        [_value("user_part", ["batch", h1]), _value("item_part", ["items", h1])],
        [_value("scores", ["batch", "items"])],
        initializers,
    )


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` as one self-contained .onnx file (weights inline, no external data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
