"""``vla-export inspect``: any artifact (checkpoint, ONNX, engine, split record, calibration set, episode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from vla_export import schemas
from vla_export.cli import checks
from vla_export.cli.common import console, err_console, write_json, wrote
from vla_export.cli.options import with_loading_options
from vla_export.cli.render import fmt_bytes, render_components, render_layers
from vla_export.errors import ConfigError, VlaExportError
from vla_export.models.resolve import LoadOptions


def _shape(v: dict[str, Any]) -> str:
    return f"{v['name']} [{', '.join(map(str, v['shape']))}] {v['dtype']}"


def _value(key: str, v: Any) -> str:
    """One manifest value for reading: 4 significant digits, thousands separators, short hashes, nested records inline."""
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "-"}[v]
    if key == "coverage" and isinstance(v, (int, float)):
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.1f} s" if key.endswith("_seconds") else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, str):
        return f"{v[:12]}…" if key == "sha256" and len(v) > 12 else v
    if isinstance(v, dict):
        if key == "parity":  # check name -> passed
            return ", ".join(f"{k} {_value(k, x) if x is None else ('pass' if x else 'FAIL')}" for k, x in v.items()) or "-"
        return ", ".join(f"{k.replace('_', ' ')} {_value(k, x)}" for k, x in v.items()) or "-"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(key, x) for x in v) or "-"
    return str(v)


def render_manifest_summary(summary: dict[str, Any]) -> list[str]:
    """The manifest's summary as ``key: value`` lines (no Python reprs, no 13-digit floats)."""
    return [f"  {k.replace('_', ' ')}: {_value(k, v)}" for k, v in summary.items()]


def _render_manifest(r: dict[str, Any]) -> None:
    summary, check = r.get("manifest_summary"), r.get("manifest_check") or {}
    if summary:
        console.print("manifest:", markup=False)
        for line in render_manifest_summary(summary):
            console.print(line, markup=False)
    if check.get("matches") is True:
        console.print(f"[green]the files match the manifest[/] ({check['manifest']})")
    elif check.get("matches") is False:
        console.print(f"[red]the files do NOT match the manifest:[/] {'; '.join(check['problems'])}")
    else:
        console.print("no manifest beside the file", style="yellow", markup=False)


def render_onnx(r: dict[str, Any]) -> None:
    opset = ", ".join(f"{k} {v}" for k, v in r["opset"].items())
    console.print(f"[bold]{r['path']}[/]  {fmt_bytes(r['file_size'])}  ONNX IR {r['ir_version']}, opset {opset}, {r['producer']}")
    console.print("inputs:  " + "; ".join(_shape(v) for v in r["inputs"]), markup=False)
    console.print("outputs: " + "; ".join(_shape(v) for v in r["outputs"]), markup=False)
    p = r["precision"]
    line = f"precision: {p['label']}"
    if p["qdq_nodes"]["DequantizeLinear"]:
        line += (f": {p['qdq_nodes']['QuantizeLinear']} Q + {p['qdq_nodes']['DequantizeLinear']} DQ nodes; {p['quantized_nodes']} of "
                 f"{p['quantizable_nodes']} MatMul/Conv/Gemm nodes quantized, {p['kept_higher_precision_nodes']} kept in higher precision")
    elif p["fp16_initializers"]:
        line += f": {p['fp16_initializers']} fp16 initializers, {p['cast_nodes']} Cast nodes"
    console.print(line, markup=False)
    top = ", ".join(f"{k} {v}" for k, v in list(r["ops"].items())[:12])
    console.print(f"{r['nodes']} nodes: {top}{', ...' if len(r['ops']) > 12 else ''}", markup=False)
    render_components("initializers by component", r["component_elements"], r["component_bytes"], sum(r["component_elements"].values()),
                      r["total_initializer_bytes"], count_label="elements")
    for f in r["external_data"]:
        state = fmt_bytes(f["bytes"]) if f["exists"] else "[red]MISSING[/]"
        console.print(f"external data: {f['name']} ({f['tensors']} tensors) {state}")
    _render_manifest(r)


def render_engine(r: dict[str, Any]) -> None:
    console.print(f"[bold]{r['path']}[/]  {fmt_bytes(r['file_size'])}  TensorRT engine")
    _render_manifest(r)
    src = r["source_onnx"]
    if src["path"]:
        match = {True: "matches the recorded sha256", False: "[red]differs from the recorded sha256[/]", None: "not found"}[
            src["matches_recorded_sha256"] if src["exists"] else None]
        console.print(f"built from {src['path']}: {match}")
    if r["io_from_onnx"]:
        console.print("inputs (from the ONNX):  " + "; ".join(_shape(v) for v in r["io_from_onnx"]["inputs"]), markup=False)
        console.print("outputs (from the ONNX): " + "; ".join(_shape(v) for v in r["io_from_onnx"]["outputs"]), markup=False)
    if r.get("layers_from_build_log"):

        targets = r.get("compute_capabilities")
        targets = ", ".join(targets) if isinstance(targets, list) else "the library's defaults"
        console.print(f"{'TensorRT-RTX' if r.get('tensorrt_flavor') == 'rtx' else 'TensorRT'} engine; compute capability targets: {targets}",
                      markup=False)
        render_layers(r["layers_from_build_log"])
    t = r["tensorrt"]
    if t["available"]:
        console.print(f"TensorRT {t['tensorrt']}: {t['num_layers']} layers ({t['note']})", markup=False)
        for io in t["io"]:
            console.print(f"  {io['mode']} {io['name']} {io['shape']} {io['dtype']}", markup=False)
    else:
        console.print(f"no per-layer information: {t['note']}", style="yellow", markup=False)
    console.print(r["verified"], style="dim")


def render_split(r: dict[str, Any]) -> None:
    console.print(f"[bold]{r['path']}[/]  split export of '{r['config']}', window {r['window']} ({r['warmup']})")
    for part, p in r["parts"].items():
        state = f"{fmt_bytes(p['bytes'])}, {p['parameters']:,} parameters, {p['precision']}" if p["exists"] else "[red]MISSING[/]"
        console.print(f"  {part}: {p['path']} {state}")
    n = r["parameters"] or {}
    console.print(f"parameters: policy {n.get('policy', 0):,}, sum of parts {n.get('sum_of_parts', 0):,}")
    sc = r["stream_check"] or {}
    if sc:
        console.print(f"stream check at export: {'pass' if sc.get('passed') else 'FAIL'}, max abs error {sc.get('max_abs_err', float('nan')):.3g}")


def render_calibration(r: dict[str, Any]) -> None:
    rec = r["record"]
    console.print(f"[bold]{r['path']}[/]  {fmt_bytes(r['file_size'])}  calibration set: {r['samples']} samples for '{rec.get('config')}' "
                  f"(window {rec.get('window')}, text {rec.get('text_len')}, seed {rec.get('seed')}, tokenizer {rec.get('tokenizer')})")
    for name, a in r["inputs"].items():
        rng = f" range {a['min']:.3g}..{a['max']:.3g}" if "min" in a else ""
        console.print(f"  {name} {a['shape']} {a['dtype']}{rng}", markup=False)
    console.print(f"from {r['windows']} windows of {len(r['episodes_used'])} episode(s)", markup=False)


def render_reference(r: dict[str, Any]) -> None:
    ckpt = r["checkpoint"] or {}
    console.print(f"{r['path']}  {fmt_bytes(r['file_size'])}  saved {r['reference_kind']} reference ({r['reference_schema']}): "
                  f"{r['samples']} samples for '{r['config']}', from {ckpt.get('path', '(checkpoint not recorded)')}", markup=False)
    for label in ("inputs", "outputs"):
        for name, a in r[label].items():
            rng = f" range {a['min']:.3g}..{a['max']:.3g}" if "min" in a else ""
            console.print(f"  {label[:-1]} {name} {a['shape']} {a['dtype']}{rng}", markup=False)
    if ckpt.get("sha256"):
        console.print(f"checkpoint sha256 {ckpt['sha256']}", markup=False)
    made = r.get("made_with") or {}
    if made or r.get("source"):
        console.print(f"made with {made}; inputs: {r.get('source') or r.get('episode')}", markup=False)


def render_episode(r: dict[str, Any]) -> None:
    console.print(f"[bold]{r['path']}[/]  {fmt_bytes(r['file_size'])}  episode '{r['name']}': {r['num_frames']} frames "
                  f"{r['frame_hw'][0]}x{r['frame_hw'][1]}, {r['total_duration']:.2f} s ({r['fps']} fps), chunk {r['action_chunk_size']}")
    a = r["actions"]
    console.print(f"actions {a['shape']} {a['dtype']} range {a.get('min', 0):.3g}..{a.get('max', 0):.3g}; events: "
                  + ", ".join(f"{k} {v}" for k, v in r["action_event_types"].items()), markup=False)
    console.print(f"instruction: {r['instruction']!r}", markup=False)


RENDERERS = {"onnx": render_onnx, "engine": render_engine, "split": render_split, "calibration": render_calibration,
             "reference": render_reference, "episode": render_episode}


@with_loading_options
def inspect(
    artifact: Path = typer.Argument(..., help="A checkpoint (.pt/.pth/.ckpt/.safetensors), .onnx, .engine/.plan, NAME.split.json, calibration .npz or episode .h5."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON (schema vla-export/inspect/1; - for standard output)."),
    save_config: Optional[Path] = typer.Option(None, "--save-config", help="Checkpoints: write the resolved model (config + renames, schema vla-export/model-config/1) for --config."),
    load: LoadOptions = LoadOptions(),
    full_load: bool = typer.Option(False, "--load", help="Checkpoints: also load the full policy; report load time and peak RSS."),
) -> None:
    """What an artifact holds: sizes per component, I/O, precision, manifest check; for checkpoints the key layout, every assumption and the strict-load verdict."""
    from vla_export.artifacts.kinds import detect_kind
    from vla_export.artifacts.inspect import inspect_artifact

    kind = detect_kind(artifact)
    if kind == "checkpoint":
        return inspect_checkpoint_cmd(artifact, json_path=json_path, save_config=save_config, load=load, full_load=full_load)
    given = [flag for flag, on in (("--config/--rename/--set/--trust-checkpoint", load != LoadOptions()), ("--load", full_load),
                                   ("--save-config", save_config)) if on]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to checkpoints only, not to a {kind} file")
    report = inspect_artifact(artifact)
    RENDERERS[report["kind"]](report)
    if json_path:
        write_json(json_path, report, schemas.INSPECT)
        wrote(json_path)


def render_inspect(report: dict[str, Any]) -> None:
    console.print(f"[bold]{report['path']}[/]  {fmt_bytes(report['file_size'])}  format={report['format']}  layout={report['layout']}")
    if report["metadata"]:
        meta = ", ".join(f"{k}={v}" for k, v in report["metadata"].items())
        console.print(f"training metadata: {meta}", markup=False)
    if report.get("key_layout"):
        kl = report["key_layout"]
        renames = f" (renames: {' '.join(kl['renames'])})" if kl["renames"] else ""
        console.print(f"key layout: {kl['description']}{renames}", markup=False)
    render_components("parameters by component", report["components"], report["component_bytes"], report["total_params"], report["total_bytes"])
    dtypes = ", ".join(f"{k}: {v:,}" for k, v in report["dtypes"].items())
    console.print(f"dtypes: {dtypes}; optimizer state: {fmt_bytes(report['optimizer_state_bytes'])}")
    if report.get("params_note"):
        console.print(f"parameters: {report['params_note']}", markup=False)
    if report["config"]:
        c = report["config"]
        clip = c["clip_vision"]
        heads = "/".join(str(t["num_heads"]) for t in (c["kosmos_vision"], c["kosmos_text"], clip) if t)
        console.print(
            f"config ({report.get('config_source')}; preset structure: {report['matched_preset'] or 'none'}): "
            f"Kosmos-2 vision {c['kosmos_vision']['hidden_size']}x{c['kosmos_vision']['num_layers']}, "
            f"text {c['kosmos_text']['embed_dim']}x{c['kosmos_text']['num_layers']} vocab {c['kosmos_text']['vocab_size']}, "
            f"CLIP {str(clip['hidden_size']) + 'x' + str(clip['num_layers']) if clip else 'none'}, heads {heads}, "
            f"LSTM {c['lstm_hidden']}x{c['lstm_layers']}, head {c['head_hidden']}, action_dim {c['action_dim']}, "
            f"tanh {c['head_tanh']}, pooling {c['pooling']}, window {c['window']}, image {c['kosmos_vision']['image_size']}",
            markup=False,
        )
    for f in report["assumptions"]:
        style = "yellow" if f["warn"] else "dim" if f["basis"] == "derived" else None
        note = f"  -> unconfirmed; confirm or correct with {f['confirm_with']}" if f["warn"] else ""
        console.print(f"  {f['basis']}: {f['field']} = {_assumed_value(f['value'])} ({f['source']}){note}", style=style, markup=False)
    if report["config"] and not report["assumptions"]:
        console.print(f"  nothing assumed: the config was {report['config_source']}", markup=False)
    if "load" in report:
        ld = report["load"]
        ratio = ld["peak_rss_bytes"] / max(ld["weights_bytes"], 1)
        console.print(f"full load (all weights read): {ld['seconds']:.2f} s, peak RSS {fmt_bytes(ld['peak_rss_bytes'])} ({ratio:.2f}x the weights)")
    verdict = "[green]loadable (strict)[/]" if report["loadable"] else "[red]NOT loadable[/]"
    bad = report.get("nonfinite") or {}
    if bad:
        per = ", ".join(f"{comp} {n:,}" for comp, n in bad.items())
        verdict += f", [red]but {sum(bad.values()):,} non-finite weights (NaN/Inf): {per}[/]"
    console.print(f"verdict: {verdict}")


def _assumed_value(v: Any) -> str:
    import json

    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def inspect_checkpoint_cmd(checkpoint: Path, *, json_path: Optional[Path], save_config: Optional[Path], load: LoadOptions, full_load: bool) -> None:
    """``vla-export inspect CHECKPOINT``: sizes per component, training metadata, the key layout, the
    resolved config (every assumption listed) and the strict-load verdict."""
    from vla_export.models.inspect import inspect_checkpoint

    checks.input_file(checkpoint, "checkpoint")
    checks.output_file(json_path, save_config)
    report = inspect_checkpoint(checkpoint, options=load, load=full_load)
    render_inspect(report)
    if json_path:
        write_json(json_path, report, schemas.INSPECT)
        wrote(json_path)
    if not report["loadable"]:
        reason = report["reason"].removeprefix(f"{report['path']}: ")  # layout errors already name the file
        raise VlaExportError(f"{checkpoint}: cannot be loaded as a policy: {reason}")
    if report["nonfinite"]:
        raise VlaExportError(f"{checkpoint}: {sum(report['nonfinite'].values()):,} non-finite weights (NaN/Inf); "
                             "exports of it are refused")
    for line in report["warnings"]:
        err_console.print(f"warning: {line}", style="yellow", markup=False)
    if save_config:
        write_json(save_config, report["record"])
        console.print(f"wrote {save_config}: pass it as --config to every command to load exactly this model")
