"""Is this the right pair of files? Decided from names and manifests before any checkpoint is loaded.

Loading a policy takes seconds (``small``: 6-11 s) and the errors that came after it named only the
problem. These checks run first, from the artifact's manifest and the checkpoint's config (read
memory-mapped, no model built), and each error says what to pass instead.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from vla_export.artifacts.kinds import SPLIT_SUFFIX, detect_kind, split_part
from vla_export.errors import ArtifactError
from vla_export.artifacts.manifest import Manifest, read_manifest, recorded_checkpoint

ARTIFACT_KINDS = ("onnx", "engine", "split")


def _q(path: Any) -> str:
    return shlex.quote(str(path))


def _kind(path: Path) -> str | None:
    try:
        return detect_kind(path)
    except ArtifactError:
        return None


def _manifest(path: Path) -> Manifest | None:
    try:
        return read_manifest(path, required=False)
    except ArtifactError:
        return None  # an unreadable manifest is reported by the command's own checks


def _split_record_of(part: Path) -> Path:
    found = split_part(part)
    return part.with_name((found[0] if found else part.stem) + SPLIT_SUFFIX)


def whole_policy_problem(artifact: Path, checkpoint: str) -> str | None:
    """Why ``artifact`` is not a whole-policy model (a split record, or one part of a split export), with what to pass instead.

    ``checkpoint`` is how the message names the checkpoint in its commands.
    """
    kind = _kind(artifact)
    if kind == "split":
        whole = artifact.name[: -len(".split.json")] + ".onnx"
        return (f"{artifact} is the record of a split export (backbone + head), and this needs one whole-policy model: "
                f"check the split export with `vla-export replay {_q(checkpoint)} {_q(artifact)} EPISODE.h5`, or export the whole "
                f"policy with `vla-export onnx {_q(checkpoint)} -o {_q(artifact.with_name(whole))}` and give that")
    if kind != "onnx":
        return None
    manifest = _manifest(artifact)
    part = manifest.part if manifest else None
    if not part:
        return None
    record = _split_record_of(artifact)
    whole = record.name[: -len(".split.json")] + ".onnx"
    return (f"{artifact} is the {part} part of a split export, not the whole policy: check the parts together with "
            f"`vla-export replay {_q(checkpoint)} {_q(record)} EPISODE.h5`, or export the whole policy with "
            f"`vla-export onnx {_q(checkpoint)} -o {_q(artifact.with_name(whole))}` and give that")


def check_parity_pair(reference: Path, artifact: Path, load_options: Any = None) -> None:
    """Refuse a wrong ``parity REFERENCE ARTIFACT`` pair before the checkpoint is loaded, naming the right command.

    Catches: swapped arguments (an artifact first, a checkpoint second); a split record or one split
    part where a whole-policy model is expected; an artifact whose manifest records another policy
    config than the checkpoint holds (read without building the model). Anything else passes.
    """
    ref_kind, art_kind = _kind(reference), _kind(artifact)
    if ref_kind in ARTIFACT_KINDS and art_kind == "checkpoint":
        raise ArtifactError(f"the checkpoint (the reference) comes first and the artifact second: "
                            f"run `vla-export parity {_q(artifact)} {_q(reference)}`")
    if ref_kind != "checkpoint":
        return
    problem = whole_policy_problem(artifact, str(reference))
    if problem:
        raise ArtifactError(problem)
    if art_kind not in ("onnx", "engine"):
        return
    manifest = _manifest(artifact)
    recorded = manifest.config if manifest else None
    if recorded is None or not reference.is_file():
        return  # no config to compare (said later by parity itself), or a missing file (its own error)
    held = checkpoint_config(reference, load_options)
    from vla_export.models.config import config_differences

    diffs = config_differences(recorded.to_dict(), held.to_dict())
    if not diffs:
        return
    shown = "; ".join(f"{k}: artifact {a!r}, checkpoint {b!r}" for k, a, b in diffs)
    source = recorded_checkpoint(artifact, manifest)
    recorded_as = (manifest.source or {}).get("checkpoint")
    if source is not None and source.resolve() == reference.resolve():
        instead = "it was exported from this file, loaded another way: give the same --config/--set as at export"
    elif source is not None:
        instead = f"check it against the checkpoint it was exported from: `vla-export parity {_q(source)} {_q(artifact)}`"
    else:
        instead = (f"check it against the checkpoint it was exported from ({'recorded as ' + repr(recorded_as) + ', not found here' if recorded_as else 'not recorded in its manifest'})")
    raise ArtifactError(
        f"{artifact}: not exported from this checkpoint's config: exported from a '{recorded.name}' policy, {reference} "
        f"holds a '{held.name}' policy, {len(diffs)} different field{'s' if len(diffs) > 1 else ''} ({shown}): {instead}; "
        f"or export this checkpoint (`vla-export onnx {_q(reference)} -o {_q(reference.with_suffix('.onnx'))}`), "
        f"or load it with the artifact's config (--config, --set)")


def checkpoint_config(path: Path, load_options: Any = None):
    """The policy config a checkpoint resolves to under the user's loading options, without building the model.

    The file is read memory-mapped (torch) or by its header (safetensors); a checkpoint that cannot be
    resolved raises here the error the full load would raise, only sooner.
    """
    from vla_export.models.checkpoint import read_checkpoint
    from vla_export.models.resolve import LoadOptions, resolve_model

    options = load_options or LoadOptions()
    resolved, _ = resolve_model(read_checkpoint(path, trust=options.trust), options)
    return resolved.config
