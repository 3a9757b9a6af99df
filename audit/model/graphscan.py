"""Side effects in graph-format models: TorchScript and ``torch.export`` archives run no Python
code from the file, but their graphs can still call operators that touch files, the network or
the process (``aten::from_file`` maps a file, writable with ``shared=True``;
``debugprims::load_tensor`` reads one; the ``c10d`` collectives open connections). Such a graph
is refused at load unless ``--trust``, with the operator named, like a pickle that needs code.

The rule is an allow-list of operator namespaces that compute on tensors (``aten``, ``prim``,
``prims``, the quantized and oneDNN/MKL kernels, ``rngprims``, ``profiler`` markers), minus the
``aten`` operators that touch files (:data:`DENIED`); any other namespace (a custom operator
library, ``c10d``, ``debugprims``, ``symm_mem``, ...) is refused, since what it does is unknown.
"""
from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["side_effect_ops", "DENIED", "ALLOWED_NAMESPACES"]

#: namespaces whose operators compute on tensors only
ALLOWED_NAMESPACES = frozenset({"aten", "prim", "prims", "quantized", "_quantized", "quantization", "mkldnn",
                                "mkldnn_prepacked", "onednn", "mkl", "sparse", "rngprims", "profiler",
                                "higher_order", "_native"})
#: operators of allowed namespaces that read, map or write files (base names, without overload)
DENIED = frozenset({"aten::from_file"})


def _why(name: str) -> str | None:
    """Why operator ``name`` (``ns::op`` or ``ns::op.overload``) is refused, or None."""
    base = name.split(".", 1)[0] if "::" in name else name
    ns = base.split("::", 1)[0]
    if base in DENIED:
        return f"{base} (reads, maps or writes files)"
    if ns not in ALLOWED_NAMESPACES:
        return f"{base} (an operator outside the tensor libraries: it may touch files, the network or the process)"
    return None


def _script_nodes(block) -> Iterator:
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _script_nodes(sub)


def _torchscript_ops(mod: torch.jit.ScriptModule) -> Iterator[str]:
    for sub in mod.modules():
        c = getattr(sub, "_c", None)
        if c is None:
            continue
        for name in c._method_names():
            graph = c._get_method(name).graph
            torch._C._jit_pass_inline(graph)  # calls to other methods and functions, inlined
            for node in _script_nodes(graph):
                yield node.kind()


def _fx_ops(gm: torch.nn.Module) -> Iterator[str]:
    for sub in gm.modules():
        graph = getattr(sub, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                yield node.target.name()
            elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverloadPacket):
                yield node.target._qualified_op_name


def side_effect_ops(program) -> list[str]:
    """The refused operators (sorted, each with why) called anywhere in ``program``: a
    TorchScript module (every method of every submodule, calls inlined, nested blocks
    included) or a ``torch.export.ExportedProgram`` / ``torch.fx.GraphModule`` (every graph,
    higher-order operators' subgraphs included). Empty when it only computes on tensors."""
    if isinstance(program, torch.jit.ScriptModule):
        ops = _torchscript_ops(program)
    elif hasattr(program, "graph_module"):
        ops = _fx_ops(program.graph_module)
    else:
        ops = _fx_ops(program)
    return sorted({why for why in map(_why, ops) if why})
