"""A base without a chat template (as Meta-Llama-3-8B ships) plus `models.chat_template` /
`tokenizer_source`: the candidate engine starts, the saved model carries the template, and `best/recipe.yaml`
says it, so `mergekit-yaml` rebuilds a folder with the same template."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from demo_configs import demo_config

from mergesearch.backends.hf import HFBackend
from mergesearch.config import SearchConfig
from mergesearch.errors import UserError
from mergesearch.merge.export import materialize, recipe_file, run_mergekit_yaml
from mergesearch.merge.resident import ResidentMerger
from mergesearch.merge.tokenizer import mergekit_templates
from mergesearch.setup import SearchSetup

EXPERTS = ("aligned", "math")


@pytest.fixture(scope="module")
def bare_base(zoo_dir, tmp_path_factory) -> Path:
    """The zoo's base with its chat template taken out, as a pretrained (not instruct) model ships."""
    folder = tmp_path_factory.mktemp("bare") / "base"
    shutil.copytree(zoo_dir / "base", folder)
    (folder / "chat_template.jinja").unlink()
    return folder


def setup_for(zoo_dir: Path, base: Path, **models) -> SearchSetup:
    config = demo_config()
    config["models"] |= {
        "base": str(base),
        "experts": [{"name": e, "path": str(zoo_dir / e)} for e in EXPERTS],
    }
    config["models"] |= models
    config["merge"] = {"method": "task_arithmetic", "granularity": "global"}
    return SearchSetup.prepare(SearchConfig.model_validate(config), log=lambda _: None)


def test_a_base_without_a_chat_template_stops_the_candidate_engine_in_one_line(zoo_dir, bare_base) -> None:
    setup = setup_for(zoo_dir, bare_base)
    assert setup.engine_model() == bare_base  # nothing chosen: the base as it is
    with pytest.raises(UserError, match="chat template"):
        HFBackend.from_pretrained(setup.engine_model(), device="cpu", name="candidate")


def test_a_chat_template_file_reaches_the_engine_the_saved_model_and_a_mergekit_rebuild(
    zoo_dir, bare_base, tmp_path
) -> None:
    template = (zoo_dir / "base" / "chat_template.jinja").read_text()
    (tmp_path / "template.jinja").write_text(template)
    setup = setup_for(zoo_dir, bare_base, chat_template=str(tmp_path / "template.jinja"))

    engine = HFBackend.from_pretrained(setup.engine_model(), device="cpu", name="candidate")
    reference = HFBackend.from_pretrained(zoo_dir / "base", device="cpu")
    assert engine.render("how do I add 2 and 3") == reference.render("how do I add 2 and 3")
    assert not (bare_base / "chat_template.jinja").exists()  # the user's folder is left as it was

    recipe = setup.space.decode(setup.space.uniform())
    merger = ResidentMerger(setup.base, setup.experts, log=lambda _: None, pool="disk")
    saved = materialize(merger, recipe, setup.base, tmp_path / "merged", tokenizer=setup.tokenizer)
    assert (saved / "chat_template.jinja").read_text() == template
    assert HFBackend.from_pretrained(saved, device="cpu").render("hi") == reference.render("hi")

    text = recipe_file(recipe, setup.base, setup.experts, "float32", "test", 0, setup.tokenizer)
    config = yaml.safe_load(text)
    assert config["tokenizer_source"] == "base" and config["chat_template"] == template
    rebuilt = run_mergekit_yaml(config, tmp_path / "mergekit")
    assert HFBackend.from_pretrained(rebuilt, device="cpu").render("hi") == reference.render("hi")


def test_mergekits_own_template_names_and_an_experts_tokenizer_are_accepted(zoo_dir, bare_base) -> None:
    setup = setup_for(zoo_dir, bare_base, tokenizer_source="aligned", chat_template="chatml")
    assert setup.tokenizer.source == zoo_dir / "aligned"
    assert setup.tokenizer.template == mergekit_templates()["chatml"].read_text()
    assert setup.tokenizer.mergekit_keys() == {
        "tokenizer_source": str(zoo_dir / "aligned"),
        "chat_template": "chatml",
    }
    assert (setup.engine_model() / "chat_template.jinja").read_text() == setup.tokenizer.template


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            {"chat_template": "llama4"},
            "models.chat_template: 'llama4' is neither one of mergekit's templates",
        ),
        ({"tokenizer_source": "/no/such/model"}, "models.tokenizer_source: '/no/such/model' is not `base`"),
    ],
)
def test_a_template_or_tokenizer_that_cannot_be_used_is_one_line_before_anything_loads(
    zoo_dir, bare_base, models, message
) -> None:
    with pytest.raises(UserError, match=message):
        setup_for(zoo_dir, bare_base, **models)


def test_config_check_names_a_chat_template_that_is_neither_mergekits_nor_a_file(tmp_path) -> None:
    from cli_helpers import assert_one_line_error, run

    config = demo_config(resolved=False)
    config["models"]["chat_template"] = "llama4"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run("config", "check", str(path))
    assert_one_line_error(
        done, "models.chat_template: 'llama4' is neither one of mergekit's templates", "llama3"
    )
