"""The ``README.md`` model card of an artefact, written from its ``config.json``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

# A Hub repo id, org/name: what base_model may hold (a local path or file name never is one).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def model_card(
    config: Mapping[str, Any],
    n_params: int,
    *,
    tags: Sequence[str] = (),
    license: str | None = None,
    repo_id: str | None = None,
) -> ModelCard:
    """The card: Hub metadata (`huggingface_hub.ModelCardData`), what the role is, how to load it.

    Args:
        config: The artefact's ``config.json``.
        n_params: The role's parameter count.
        tags: Hub tags (the library's; one-step generators add ``one-step-generation``).
        license: Licence identifier, e.g. ``"cc-by-nc-sa-4.0"``.
        repo_id: Where the artefact will live, for the loading snippet.
    """
    name, where = config["_class_name"], repo_id or "PATH_OR_REPO_ID"
    teacher, revision = config.get("teacher_id"), config.get("teacher_revision")
    if teacher and (not _HUB_ID.fullmatch(teacher) or teacher.endswith((".pkl", ".safetensors"))):
        teacher = None  # not a Hub id: a local path would leak into the card and give a broken link
    training = config.get("training") or {}
    shape, label_dim = config.get("sample_shape"), config.get("label_dim", 0)
    is_generator = shape is not None
    is_image = is_generator and len(shape) == 3
    data = ModelCardData(
        library_name="scoredistill",
        license=license,
        base_model=[teacher] if teacher else None,
        base_model_relation="finetune" if teacher else None,
        pipeline_tag=("unconditional-image-generation" if label_dim == 0 else "image-generation") if is_image else None,
        tags=list(tags) + (["one-step-generation"] if is_generator else []),
    )
    dims = ", ".join(map(str, shape or ()))
    if is_generator:
        classes = f"{label_dim} classes" if label_dim else "unconditional"
        about = (
            f"A one-step generator ({n_params:,} parameters, samples of shape [{dims}], {classes}): "
            f"`x = D(sigma_init * z; sigma_init)` with `sigma_init = {config['sigma_init']}`, one network "
            "evaluation per sample."
        )
    elif name == "FakeScore":
        about = f"The fake score network of a score-distillation run ({n_params:,} parameters)."
    else:
        about = f"An EDM-preconditioned denoiser ({n_params:,} parameters)."
    lines = [f"# {name} ({config['backbone']['_class_name']})", "", about, ""]
    lines += [
        f"Made with [scoredistill](https://github.com/scoredistill/scoredistill) "
        f"{config['_scoredistill_version']}; weights stored as {config['torch_dtype']}.",
        "",
    ]
    if teacher:
        at = f" at revision `{revision}`" if revision else ""
        lines += ["## Teacher", "", f"Distilled from [`{teacher}`](https://huggingface.co/{teacher}){at}.", ""]
    elif training.get("teacher_file"):
        digest = f" (SHA-256 `{training['teacher_sha256']}`)" if training.get("teacher_sha256") else ""
        lines += ["## Teacher", "", f"Distilled from a local teacher, `{training['teacher_file']}`{digest}.", ""]
    if license:
        lines += ["## Licence", "", f"`{license}`. Check that it is compatible with the teacher's licence.", ""]
    lines += ["## How to load", "", "```python", f"from scoredistill import {name}", ""]
    lines.append(f'model = {name}.from_pretrained("{where}")  # strict: every key and shape is checked')
    if is_generator:
        lines.append(f"x = model.sample(16)  # [16, {dims}]" + (" in [-1, 1]" if is_image else ""))
    lines += ["```", ""]
    if is_generator:
        lines += [f"Or from the command line: `scoredistill sample --model {where} --n 64 --out grid.png`.", ""]
    if config.get("training"):
        lines += ["## How it was made", "", "| setting | value |", "|---|---|"]
        lines += [f"| `{k}` | `{json.dumps(v)}` |" for k, v in config["training"].items()]
        lines.append("")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
