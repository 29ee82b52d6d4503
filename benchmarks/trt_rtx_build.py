"""Build one ONNX with TensorRT-RTX and record parse/build time, peak RSS, engine size and the engine's layers by precision.

A bench harness for the full-size ``mobile-vla`` path (benchmarks/trt-rtx-mobile-vla.md), written while
``vla-export trt`` could not yet drive TensorRT-RTX: ``vla-export trt`` is the product path. It parses by
file (so external data and > 2 GB models work), builds strongly typed (FP16/INT8 come from the ONNX's types
and Q/DQ nodes) with a VERBOSE logger and detailed profiling verbosity, and classifies the final layers the
build log lists: 'Int8 x Int8' when an Int8 input meets Int8 weights, 'Int8 weights' for weight-only fusions,
else the lowest float precision among its tensors (a layer touching Half counts as Half).

usage: python benchmarks/trt_rtx_build.py MODEL.onnx OUT.json [TEXT_LEN]   (imports tensorrt_rtx, else tensorrt_rtx_bindings)
One optimisation profile, fixed shapes: batch 1 (the robot's loop), every other dynamic axis TEXT_LEN (default 32).
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from pathlib import Path

LAYER = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[(?P<inputs>.*?)\], "
                   r"Constants: \[(?P<constants>.*?)\], Outputs: \[(?P<outputs>.*?)\], TacticName")
DTYPE = re.compile(r"Datatype: (\w+)")


def precision(ins: list[str], consts: list[str], outs: list[str]) -> str:
    if ins.count("Int8") and consts.count("Int8") or ins.count("Int8") >= 2:
        return "Int8 x Int8"
    if consts.count("Int8"):
        return "Int8 weights"
    every = ins + consts + outs
    return next((d for d in ("FP8", "BF16", "Half", "Float") if d in every), outs[0] if outs else "none")


def count_layers(text: str) -> dict:
    by_precision: dict[str, int] = {}
    gemm: dict[str, int] = {}
    for line in text.split("\n"):
        m = LAYER.match(line)
        if m:
            p = precision(*(DTYPE.findall(m[k]) for k in ("inputs", "constants", "outputs")))
            by_precision[p] = by_precision.get(p, 0) + 1
            if m["type"].lower() in ("gemm", "correlation"):
                gemm[p] = gemm.get(p, 0) + 1
    return {"total": sum(by_precision.values()), "by_precision": by_precision, "gemm_by_precision": gemm}


def main(onnx: str, out: str, text_len: str = "32") -> int:
    try:
        import tensorrt_rtx as trt
    except ImportError:
        import tensorrt_rtx_bindings as trt

    messages: list[tuple[str, str]] = []

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            messages.append((str(severity).split(".")[-1], msg))
            if severity <= trt.ILogger.Severity.WARNING:
                print(f"[{severity}] {msg}", flush=True)

    logger = Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    ok = parser.parse_from_file(onnx)
    parse_s = time.perf_counter() - t0
    record = {"onnx": onnx, "tensorrt_rtx": trt.__version__, "parsed": bool(ok), "parse_seconds": round(parse_s, 2),
              "parser_errors": [str(parser.get_error(i)) for i in range(parser.num_errors)], "layers_in_network": network.num_layers}
    if ok:
        config = builder.create_builder_config()
        profile, shapes = builder.create_optimization_profile(), {}
        for i in range(network.num_inputs):
            t = network.get_input(i)
            dims = [d if d >= 0 else 1 if axis == 0 else int(text_len) for axis, d in enumerate(t.shape)]
            profile.set_shape(t.name, dims, dims, dims)
            shapes[t.name] = dims
        config.add_optimization_profile(profile)
        record["profile"] = shapes
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        t0 = time.perf_counter()
        engine = builder.build_serialized_network(network, config)
        record["build_seconds"] = round(time.perf_counter() - t0, 2)
        record["engine_bytes"] = engine.nbytes if engine is not None else None
        layer_log = next((m for _, m in messages if m.startswith("Layers:\n")), "")
        record["layers"] = count_layers(layer_log) if layer_log else None
        del engine
    record["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    record["warnings"] = sorted({m for s, m in messages if s in ("WARNING",)})
    record["errors"] = [m for s, m in messages if s in ("ERROR", "INTERNAL_ERROR")]
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "warnings"}), flush=True)
    return 0 if ok and record.get("engine_bytes") else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
