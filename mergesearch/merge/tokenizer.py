"""The merged model's tokenizer and chat template, with mergekit's meaning of ``tokenizer_source`` and
``chat_template``.

A merge takes its weights from the pool and, by default, everything else from the base. That fails for
the paper's own setting: Meta-Llama-3-8B, the base, has no chat template, so the candidate engine (which
renders every prompt through one) cannot start, and a saved merge would have none either. mergekit users
set ``tokenizer_source`` (whose tokenizer) and ``chat_template`` (one of mergekit's templates, or Jinja)
for exactly this; the same two settings here reach the candidate engine (``engine_folder``: the base's
weights under the chosen tokenizer files), the saved model (``write_tokenizer_files``) and
``best/recipe.yaml`` (``mergekit_keys``), so ``mergekit-yaml`` rebuilds the same folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergesearch.errors import UserError
from mergesearch.io import atomic_dir
from mergesearch.model_files import weight_files

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
TEMPLATE_FILE = "chat_template.jinja"


def mergekit_templates() -> dict[str, Path]:
    """The chat templates mergekit ships, by name (``llama3``, ``chatml``, ...), found without importing
    mergekit (seconds), so `config check` can name a wrong one."""
    spec = importlib.util.find_spec("mergekit")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(next(iter(spec.submodule_search_locations))) / "_data" / "chat_templates"
    return {path.stem: path for path in sorted(folder.glob("*.jinja"))}


def check_chat_template(template: str | None, field: str = "models") -> None:
    """A template that is neither a file nor one of mergekit's is one line (before any model is read)."""
    if (
        template is not None
        and template not in mergekit_templates()
        and not Path(template).expanduser().is_file()
    ):
        known = ", ".join(sorted(mergekit_templates()))
        raise UserError(
            f"{field}.chat_template: {template!r} is neither one of mergekit's templates ({known}) "
            "nor a Jinja file"
        )


@dataclass(frozen=True)
class TokenizerChoice:
    """Whose tokenizer files a merged model takes (``source``, a folder) and which chat template
    (``template``: its text; None keeps the source's), with how mergekit's config names them."""

    source: Path
    source_key: str  # "base" or the folder, as mergekit's tokenizer_source takes it
    template: str | None = None
    template_key: str | None = None  # a mergekit template's name, or the Jinja text itself

    @property
    def is_base_as_is(self) -> bool:
        return self.source_key == "base" and self.template is None

    @classmethod
    def of(
        cls, source: str, template: str | None, base: Path, experts: dict[str, Path], field: str = "models"
    ) -> TokenizerChoice:
        """``source``: ``base``, an expert's name or a model folder; ``template``: a mergekit template's
        name or a Jinja file. A wrong one is one line naming the field."""
        if source == "base":
            folder, key = base, "base"
        elif source in experts:
            folder = experts[source]
            key = str(folder)
        else:
            folder = Path(source).expanduser()
            key = str(folder)
        if source == "base" and template is None:
            return cls(folder, key)  # the base as it is: its files are what the engine reads anyway
        if not (folder / "tokenizer_config.json").is_file() and not (folder / "tokenizer.json").is_file():
            raise UserError(
                f"{field}.tokenizer_source: {source!r} is not `base`, an expert's name or a folder with "
                "tokenizer files"
            )
        if template is None:
            return cls(folder, key)
        check_chat_template(template, field)
        known = mergekit_templates()
        if template in known:
            return cls(folder, key, known[template].read_text(), template)
        text = Path(template).expanduser().read_text()
        return cls(folder, key, text, text)

    def mergekit_keys(self) -> dict[str, Any]:
        """What ``best/recipe.yaml`` says for them (nothing when the base's tokenizer is kept as it is)."""
        keys: dict[str, Any] = {}
        if not self.is_base_as_is:
            keys["tokenizer_source"] = self.source_key
        if self.template_key is not None:
            keys["chat_template"] = self.template_key
        return keys

    def write_tokenizer_files(self, out: Path) -> None:
        """The tokenizer files of ``source`` into ``out``, with ``template`` as its chat template."""
        for name in TOKENIZER_FILES:
            if (self.source / name).is_file():
                shutil.copyfile(self.source / name, out / name)
        if self.template is None:
            return
        (out / TEMPLATE_FILE).write_text(self.template)
        config_path = out / "tokenizer_config.json"
        if config_path.is_file():  # one template only: the file's, not a second one in the config
            config = json.loads(config_path.read_text())
            if config.pop("chat_template", None) is not None:
                config_path.write_text(json.dumps(config, indent=2) + "\n")

    def digest(self) -> str:
        payload = json.dumps([str(self.source), self.source_key, self.template])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def engine_folder(base: Path, choice: TokenizerChoice, cache: Path) -> Path:
    """The folder the candidate engine starts from: ``base`` itself when its tokenizer is kept as it is;
    else the base's config and weights (linked, not copied) under the chosen tokenizer files, made once
    per node in ``cache``."""
    if choice.is_base_as_is:
        return base
    folder = cache / "engines" / f"{base.name}-{choice.digest()}"
    if (folder / "config.json").is_file():
        return folder
    with atomic_dir(folder) as tmp:
        for name in ("config.json", "generation_config.json"):
            if (base / name).is_file():
                shutil.copyfile(base / name, tmp / name)
        for weights in weight_files(base):
            os.symlink(weights.resolve(), tmp / weights.name)
        index = base / "model.safetensors.index.json"
        if index.is_file():
            shutil.copyfile(index, tmp / index.name)
        choice.write_tokenizer_files(tmp)
    return folder
