"""ONNX graph helpers every tool shares: node names and module scopes, components of initializers, Q/DQ detection.

Below the tools on purpose: export (quantize, sensitivity, trt), verify (locate) and ``inspect`` read the same
graphs; none of them owns these rules (as Polygraphy keeps its ``backend/onnx/util.py`` below its tools).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
import copy
from typing import Any

from vla_export.errors import DataError
from vla_export.models.components import component_of


#: Ops whose inputs the INT8 quantizer may feed through DequantizeLinear (the compute-heavy ones).
QUANTIZABLE_OPS = ("MatMul", "Conv", "Gemm", "ConvTranspose")


QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


#: The wrapper module the ONNX exporter puts around the policy (its parameters are ``policy.<name>``).
GRAPH_PREFIX = "policy."


def component_of_onnx_name(name: str) -> str:
    """The policy component an initializer belongs to, from its name (the exporter keeps parameter names)."""
    return component_of(name[len(GRAPH_PREFIX):] if name.startswith(GRAPH_PREFIX) else name)


def has_module_scopes(model) -> bool:
    """Whether the nodes carry the dynamo exporter's module scopes (what ``parity --locate`` needs)."""
    return any(p.key == SCOPE_KEY for n in model.graph.node for p in n.metadata_props)


SCOPE_KEY = "pkg.torch.onnx.name_scopes"


def node_module_scopes(node) -> list[str]:
    """Module paths (outermost first) of the dynamo-exported ``node``; ``[]`` without metadata."""
    raw = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), None)
    if raw is None:
        return []
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return []
    # ['', 'policy', 'policy.kosmos_model', ..., '<fx node name>']: the first is the root, the last the op.
    return [s for s in scopes[1:-1] if isinstance(s, str)]


def ensure_node_names(model) -> None:
    """Give unnamed nodes a unique name (exclusion lists and TensorRT layer names refer to them)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def producers(model) -> dict[str, Any]:
    return {out: node for node in model.graph.node for out in node.output}


def quantized_nodes(model) -> list[str]:
    """Names of the nodes an input of which comes from a DequantizeLinear (the quantized layers)."""
    prod = producers(model)
    return [n.name for n in model.graph.node if n.op_type != "DequantizeLinear"
            and any(i in prod and prod[i].op_type == "DequantizeLinear" for i in n.input)]


def with_float_nodes(qdq_model, float_model, nodes: Iterable[str]):
    """A copy of ``qdq_model`` where ``nodes`` take the float model's inputs (no INT8), dead Q/DQ pruned."""
    nodes = set(nodes)
    model = copy.deepcopy(qdq_model)
    float_nodes = {n.name: n for n in float_model.graph.node}
    float_inits = {i.name: i for i in float_model.graph.initializer}
    have = {i.name for i in model.graph.initializer}
    prod = producers(model)
    for node in model.graph.node:
        if node.name not in nodes:
            continue
        source = float_nodes.get(node.name)
        if source is None or len(source.input) != len(node.input):
            raise DataError(f"node {node.name} of the Q/DQ model has no counterpart in the float model: not quantized from it")
        for k, name in enumerate(node.input):
            if name in prod and prod[name].op_type == "DequantizeLinear":
                original = source.input[k]
                if original in float_inits:
                    # The quantizer may have given the DequantizeLinear output the float tensor's own name
                    # (onnxruntime does for biases): the float copy then needs a name of its own.
                    target = original if original not in prod else f"{original}__float"
                    if target not in have:
                        init = copy.deepcopy(float_inits[original])
                        init.name = target
                        model.graph.initializer.append(init)
                        have.add(target)
                    original = target
                node.input[k] = original
    _prune(model)
    return model


def _prune(model) -> None:
    """Drop nodes and initializers no graph output depends on (the Q/DQ left behind by the surgery)."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    needed.update(i for n in g.node for i in n.input)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inits = [i for i in model.graph.initializer if i.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
