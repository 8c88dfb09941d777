"""Recipes: shipped presets, every kind of validation error, overrides, resolution and the TOML round trip."""

from __future__ import annotations

import re
import tomllib

import pytest

from helpers import run
from vlmo_cli.errors import RecipeError
from vlmo_cli.config.recipe import dump_toml, load_recipe, parse_recipe, shipped_recipes, stage_names
from vlmo_cli.config.schema import STAGES, PretrainVLTask, RecipeTrain

SHIPPED = ["tiny", "base", "base_plus", "large"]
#: the BEiT-3 family's recipes (``[model] family = "beit3"``): fine-tuning and evaluation sections only
BEIT3_SHIPPED = ["beit3_tiny", "beit3_base", "beit3_large"]

MINIMAL = """
[model]
size = "tiny"

[data]
batch_size = 8

[train]
lr = 1e-3
max_steps = 10

[pretrain.vl]
dataset = "pairs"
"""


def problems_of(text: str, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "bad.toml", overrides)
    return [str(p) for p in info.value.problems]


# ------------------------------------------------------------------------------------------ shipped recipes
def test_shipped_recipes_are_installed_with_descriptions():
    infos = {info.name: info for info in shipped_recipes()}
    assert sorted(infos) == sorted(SHIPPED + BEIT3_SHIPPED)
    for name, info in infos.items():
        family, size = ("BEiT-3-", name.removeprefix("beit3_")) if name in BEIT3_SHIPPED else ("VLMo-", name)
        assert info.model_size == size
        assert info.description.startswith(family + size)
        assert info.path.is_file()


@pytest.mark.parametrize("name", BEIT3_SHIPPED)
def test_shipped_beit3_recipe_resolves_every_finetune_and_eval_section(name):
    from vlmo_cli.model.beit3_config import Beit3Config

    recipe = load_recipe(name)
    pretrain = ["pretrain.mdm"] if name == "beit3_tiny" else []  # the demo's: masked data modelling
    assert recipe.stage_names() == pretrain + [s for s in stage_names() if not s.startswith("pretrain.")]
    for stage in recipe.stage_names():
        resolved = recipe.resolve(stage)
        config = resolved.model.build_config()
        assert resolved.model.family == "beit3" and isinstance(config, Beit3Config)
        assert config.name == name.removeprefix("beit3_")
        assert resolved.data.image_size % config.patch_size == 0
        assert resolved.data.max_text_len <= config.max_text_len
        if resolved.train is not None:
            assert resolved.train.max_steps or resolved.train.max_epochs


def test_beit3_recipes_carry_the_published_hyper_parameters():
    """A few values of unilm beit3/get_started/*.md (the recipe comments cite each)."""
    base, large = load_recipe("beit3_base"), load_recipe("beit3_large")
    vqa = base.resolve("finetune.vqa")
    assert (vqa.data.image_size, vqa.data.batch_size, vqa.train.lr, vqa.train.lr_mult_heads) == (480, 128, 3e-5, 20.0)
    assert vqa.train.betas == (0.9, 0.98) and vqa.model.get("drop_path_rate") == 0.1
    nlvr2 = base.resolve("finetune.nlvr2")
    assert (nlvr2.train.lr, nlvr2.train.layer_decay, nlvr2.train.weight_decay) == (7e-4, 0.65, 0.2)
    coco = base.resolve("finetune.retrieval_coco")
    assert (coco.data.image_size, coco.data.batch_size, coco.train.lr, coco.train.max_epochs) == (384, 3072, 2e-4, 15)
    assert base.resolve("finetune.retrieval_flickr").train.lr == 1e-4
    assert large.resolve("finetune.vqa").train.lr == 2e-5 and large.resolve("finetune.nlvr2").train.layer_decay == 0.85


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_validates_and_resolves_every_stage(name):
    recipe = load_recipe(name)
    assert recipe.stage_names() == stage_names()  # every stage and task is configured
    for stage in recipe.stage_names():
        resolved = recipe.resolve(stage)
        config = resolved.model.build_config()
        assert config.name == name
        assert resolved.data.image_size % config.patch_size == 0
        assert (resolved.train is None) == (STAGES[stage].kind == "eval")
        if resolved.train is not None:
            assert resolved.train.max_steps or resolved.train.max_epochs
            resolved.batch_plan(world_size=1)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_header_shows_commands_and_an_override(name):
    text = {info.name: info for info in shipped_recipes()}[name].path.read_text()
    header = text.split("\n[", 1)[0]
    for command in ("vlmo pretrain-vision", "vlmo pretrain-text", "vlmo pretrain-vl", "vlmo finetune vqa", "vlmo eval"):
        assert command in header
    assert re.search(r"train\.lr=\S+", header)


# The paper's hyper-parameters (reference §9-§11): (stage, key) -> value per size.
PAPER = {
    ("pretrain.text", "batch_size"): (1024, 1024, 1024),
    ("pretrain.text", "lr"): (2e-4, 2e-4, 2e-4),
    ("pretrain.text", "max_steps"): (200_000, 200_000, 200_000),
    ("pretrain.text", "max_text_len"): (196, 196, 196),
    ("pretrain.vl", "batch_size"): (1024, 1024, 1024),
    ("pretrain.vl", "lr"): (2e-4, 1e-4, 5e-5),
    ("pretrain.vl", "max_steps"): (200_000, 200_000, 200_000),
    ("pretrain.vl", "warmup"): (2500, 2500, 2500),
    ("finetune.vqa", "image_size"): (480, 480, 480),
    ("finetune.vqa", "batch_size"): (128, 128, 128),
    ("finetune.vqa", "max_epochs"): (10, 10, 10),
    ("finetune.vqa", "warmup"): (0.1, 0.1, 0.1),
    ("finetune.vqa", "lr"): (3e-5, 3e-5, 1.5e-5),
    ("finetune.vqa", "lr_mult_heads"): (20, 20, 20),
    ("finetune.vqa", "drop_path_rate"): (0.15, 0.15, 0.15),
    ("finetune.nlvr2", "image_size"): (384, 384, 384),
    ("finetune.nlvr2", "batch_size"): (128, 128, 128),
    ("finetune.nlvr2", "lr"): (5e-5, 3e-5, 3e-5),
    ("finetune.nlvr2", "drop_path_rate"): (0.1, 0.2, 0.15),
    ("finetune.retrieval_coco", "image_size"): (384, 384, 384),
    ("finetune.retrieval_coco", "batch_size"): (3072, 3072, 3072),
    ("finetune.retrieval_coco", "max_steps"): (3000, 3000, 3000),
    ("finetune.retrieval_coco", "warmup"): (300, 300, 300),
    ("finetune.retrieval_coco", "lr"): (3e-5, 3e-5, 2e-5),
    ("finetune.retrieval_coco", "drop_path_rate"): (0.2, 0.2, 0.2),
    ("finetune.retrieval_flickr", "batch_size"): (3072, 3072, 3072),
    ("finetune.retrieval_flickr", "max_steps"): (1500, 1500, 1500),
    ("finetune.retrieval_flickr", "warmup"): (150, 150, 150),
    ("finetune.retrieval_flickr", "lr"): (3e-5, 3e-5, 2e-5),
    ("finetune.retrieval_flickr", "drop_path_rate"): (0.15, 0.2, 0.2),
}


@pytest.mark.parametrize("index,name", list(enumerate(["base", "base_plus", "large"])))
def test_paper_hyper_parameters(index, name):
    recipe = load_recipe(name)
    for (stage, key), values in PAPER.items():
        resolved = recipe.resolve(stage)
        if key in ("image_size", "max_text_len", "batch_size"):
            got = getattr(resolved.data, key)
        elif key == "drop_path_rate":
            got = resolved.model.build_config().drop_path_rate
        else:
            got = getattr(resolved.train, key)
        assert got == values[index], f"{name} {stage}.{key}"
        assert type(got) is type(values[index]) or key == "lr_mult_heads", f"{name} {stage}.{key} type"
    for stage in recipe.stage_names():
        train = recipe.resolve(stage).train
        # stage 1 follows BEiT, masked data modelling BEiT-3, and classification is not in the paper; everything
        # else is the VLMo configs
        if train is not None and stage not in ("pretrain.vision", "pretrain.mdm", "finetune.classify"):
            assert train.betas == (0.9, 0.98) and train.weight_decay == 0.01 and train.schedule == "linear"
    assert recipe.resolve("pretrain.text").model.build_config().max_text_len == 196
    assert recipe.resolve("pretrain.vl").task.mlm_weight == 0.25
    assert recipe.resolve("finetune.nlvr2").model.build_config().num_modality_types == 3
    vqa = recipe.resolve("finetune.vqa").task
    assert (vqa.split, vqa.val_split, vqa.num_answers) == ("train+trainable_val", "rest_val", 3129)


# ------------------------------------------------------------------------------------------ each error class
def test_unknown_key_suggests_the_closest():
    (problem,) = problems_of(MINIMAL.replace("lr = 1e-3", "lr = 1e-3\nwarmpu = 0.1"))
    assert problem.startswith("bad.toml: train.warmpu: unknown key in [train]")
    assert '(did you mean "warmup"?)' in problem
    assert "allowed: lr, weight_decay" in problem


def test_unknown_stage_key_and_section_suggest():
    found = problems_of(MINIMAL + "mlm_wieght = 0.3\n[finetune.vqq]\nlr = 1.0\n")
    assert any('pretrain.vl.mlm_wieght: unknown key in [pretrain.vl] (did you mean "mlm_weight"?)' in p for p in found)
    assert any('finetune.vqq: unknown section [finetune.vqq] (did you mean "finetune.vqa"?)' in p for p in found)


def test_wrong_type():
    (problem,) = problems_of(MINIMAL.replace("batch_size = 8", 'batch_size = "eight"'))
    assert problem == 'bad.toml: data.batch_size: got "eight"; expected an integer'
    (problem,) = problems_of(MINIMAL.replace("max_steps = 10", "max_steps = 10.0"))
    assert problem == "bad.toml: train.max_steps: got 10.0; expected an integer"
    (problem,) = problems_of(MINIMAL.replace("lr = 1e-3", "lr = true"))
    assert problem == "bad.toml: train.lr: got true; expected a number"


def test_out_of_range():
    (problem,) = problems_of(MINIMAL + "mlm_probability = 1.5\n")
    assert problem == "bad.toml: pretrain.vl.mlm_probability: got 1.5; must be > 0 and < 1"
    (problem,) = problems_of(MINIMAL.replace("lr = 1e-3", "lr = 1e-3\nwarmup = 2.5"))
    assert "train.warmup: got 2.5; a float warmup is a fraction" in problem


def test_bad_enum_value():
    (problem,) = problems_of(MINIMAL + 'init_vlffn = "txt"\n')
    assert problem == 'bad.toml: pretrain.vl.init_vlffn: got "txt"; expected one of "random", "text", "image"'
    (problem,) = problems_of(MINIMAL.replace('size = "tiny"', 'size = "bass"'))
    assert problem == (
        'bad.toml: model.size: got "bass" (did you mean "base"?); allowed: "tiny", "base", "base_plus", "large"'
    )


def test_missing_required_keys():
    found = problems_of(MINIMAL.replace('dataset = "pairs"', "").replace("lr = 1e-3", ""))
    assert "bad.toml: pretrain.vl.dataset: missing required key" in found[0] + found[1]
    assert any(p.startswith("bad.toml: train.lr: missing required key") and "set it in [train]" in p for p in found)
    found = problems_of(MINIMAL.replace('size = "tiny"', ""))
    assert found == [
        "bad.toml: model.size: missing required key (named model size); set it in [model]; "
        "allowed: tiny, base, base_plus, large"
    ]


def test_binary_file_is_a_toml_error_naming_the_file(tmp_path, capsys):
    binary = tmp_path / "weights.toml"
    binary.write_bytes(b"[model]\nsize = \"tiny\"\n\x80\x04\x95PK\x03\x04\xff\xfe")
    with pytest.raises(RecipeError) as info:
        load_recipe(binary)
    assert str(info.value).startswith(f"recipe {binary}: invalid TOML at line 3: not UTF-8 text (byte 0x80)")
    for args in (["recipes", "show", str(binary)], ["recipes", "validate", str(binary)],
                 ["pretrain-vl", str(binary)]):
        code, out, err = run(capsys, *args)
        assert code == 2, args
        assert "Traceback" not in out + err and "UnicodeDecodeError" not in out + err
        assert f"recipe {binary}: invalid TOML at line 3: not UTF-8 text" in err


def test_toml_syntax_error_names_file_line_and_column():
    with pytest.raises(RecipeError) as info:
        parse_recipe(MINIMAL.replace("batch_size = 8", "batch_size = "), "bad.toml")
    assert str(info.value).startswith("recipe bad.toml: invalid TOML at line 6, column 14:")


def test_inconsistent_values_are_reported():
    found = problems_of(MINIMAL + "image_size = 36\nmax_epochs = 0\nmax_steps = 0\n")
    assert any("pretrain.vl.model" in p and "not a multiple of patch_size 8" in p for p in found)
    (problem,) = problems_of(MINIMAL.replace("max_steps = 10", "max_steps = 0"))
    assert problem == "bad.toml: pretrain.vl.max_steps: set max_steps or max_epochs (both are 0)"


def test_several_problems_are_reported_at_once():
    text = MINIMAL.replace('size = "tiny"', 'size = "tiny"\nsise = 1').replace("batch_size = 8", "batch_size = -1")
    text += 'precision = "fp8"\n[eval.retrieval]\nrerank_k = -3\n'
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "bad.toml")
    lines = str(info.value).splitlines()
    assert lines[0] == "recipe bad.toml: 5 problems"
    assert len(lines) == 6 and all(line.startswith("  bad.toml: ") for line in lines[1:])
    keys = [line.split(": ")[1] for line in lines[1:]]
    assert keys == ["model.sise", "data.batch_size", "pretrain.vl.precision", "eval.retrieval.rerank_k",
                    "eval.retrieval.dataset"]


# ------------------------------------------------------------------------------------------ overrides
def test_overrides_are_typed_by_the_schema():
    recipe = load_recipe(
        "tiny",
        [
            "train.lr=2e-4",  # float
            "pretrain.vl.batch_size=64",  # int, flat stage key routed to [data]
            "pretrain.vl.train.grad_clip=1",  # nested stage key, int accepted for a float
            "train.compile=true",  # bool
            "train.betas=0.9,0.999",  # tuple from a comma list
            "train.fused_adamw=auto",  # bool | "auto"
            "pretrain.vl.init_vlffn=text",  # enum
            "pretrain.vl.dataset=[\"a\", \"b\"]",  # list of paths
            "pretrain.vl.run_name=2024",  # str stays str
        ],
    )
    stage = recipe.resolve("pretrain.vl")
    assert stage.data.batch_size == 64
    assert stage.train.lr == 2e-4  # the command line's shared lr wins over the stage's own lr in the file
    assert recipe.resolve("pretrain.vision").train.lr == 2e-4
    assert stage.train.grad_clip == 1.0 and isinstance(stage.train.grad_clip, float)
    assert stage.train.compile is True and stage.train.betas == (0.9, 0.999) and stage.train.fused_adamw == "auto"
    assert stage.task.init_vlffn == "text" and stage.task.dataset == ("a", "b")
    assert stage.train.run_name == "2024"
    assert parse_recipe(MINIMAL, overrides=["model.size=base"]).resolve("pretrain.vl").model.build_config().depth == 12


def test_bad_overrides_are_reported_like_file_errors():
    with pytest.raises(RecipeError) as info:
        load_recipe("tiny", ["train.lr=abc", "train.lrr=1", "pretrain.vl.mlm_weight=-1", "nokey", "model.size=huge"])
    lines = str(info.value).splitlines()
    assert lines[0].endswith("tiny.toml: 5 problems")
    assert lines[1] == "  override 'train.lr=abc': train.lr: got \"abc\"; expected a number"
    assert lines[2] == "  override 'train.lrr=1': train.lrr: unknown key (did you mean \"train.lr\"?)"
    assert lines[3] == "  override 'pretrain.vl.mlm_weight=-1': pretrain.vl.mlm_weight: got -1.0; must be >= 0"
    assert "expected key.path=value" in lines[4]
    assert "model.size: got \"huge\"" in lines[5]


def test_command_line_shared_key_beats_the_stage_section_of_the_file():
    recipe = load_recipe("tiny", ["train.max_steps=5"])  # [pretrain.vl] max_steps = 300 in the file
    assert recipe.resolve("pretrain.vl").train.max_steps == 5
    assert recipe.resolve("pretrain.vision").train.max_steps == 5
    assert [str(r) for r in recipe.replaced_in("pretrain.vl")] == [
        "[pretrain.vl] max_steps = 300 replaced by the command line's train.max_steps=5"
    ]
    assert recipe.replaced_in("pretrain.vision") == []  # the file does not set it there: nothing replaced
    # the README's example: train.lr=1e-4 on base runs stage 3 at 1e-4, not the file's [pretrain.vl] lr = 2e-4
    assert load_recipe("base").resolve("pretrain.vl").train.lr == 2e-4
    assert load_recipe("base", ["train.lr=1e-4"]).resolve("pretrain.vl").train.lr == 1e-4


def test_command_line_stage_key_beats_the_command_line_shared_key_in_any_order():
    for overrides in (["train.max_steps=5", "pretrain.vl.max_steps=7"], ["pretrain.vl.train.max_steps=7",
                                                                          "train.max_steps=5"]):
        recipe = load_recipe("tiny", overrides)
        assert recipe.resolve("pretrain.vl").train.max_steps == 7
        assert recipe.resolve("finetune.vqa").train.max_steps == 5
        assert recipe.replaced_in("pretrain.vl") == []


def test_command_line_shared_key_beats_nested_stage_tables_and_keeps_other_sections():
    text = MINIMAL + "max_text_len = 24\n[pretrain.vl.data]\nbatch_size = 4\n"
    recipe = parse_recipe(text, "r.toml", ["data.batch_size=2", "data.max_text_len=12"])
    stage = recipe.resolve("pretrain.vl")
    assert stage.data.batch_size == 2 and stage.data.max_text_len == 12
    assert stage.model.build_config().max_text_len == 24  # the flat key also sets [model]: kept there
    assert sorted(str(r) for r in recipe.replaced_in("pretrain.vl")) == [
        "[pretrain.vl] batch_size = 4 replaced by the command line's data.batch_size=2",
        "[pretrain.vl] max_text_len = 24 replaced by the command line's data.max_text_len=12",
    ]
    assert parse_recipe(text, "r.toml").resolve("pretrain.vl").data.batch_size == 4  # without it, the file


def test_recipes_show_resolved_shows_the_command_line_value(capsys):
    code, out, _ = run(capsys, "recipes", "show", "tiny", "train.max_steps=5", "--resolved", "pretrain.vl")
    assert code == 0
    assert parse_recipe(out).resolve("pretrain.vl").train.max_steps == 5


@pytest.mark.slow
def test_run_log_names_the_replaced_file_values(demo_root, monkeypatch, tmp_path, capsys):
    recipe = tmp_path / "vision.toml"
    recipe.write_text('[model]\nsize = "tiny"\nvocab_size = 160\n[data]\nbatch_size = 4\nnum_workers = 0\n'
                      '[train]\nlr = 1e-3\nmax_steps = 100\n'
                      '[pretrain.vision]\ndataset = "demo_data/images"\nmax_steps = 300\nrun_name = "v"\n')
    monkeypatch.chdir(demo_root)
    code, out, err = run(capsys, "pretrain-vision", str(recipe), "train.max_steps=1",
                         f"train.output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    assert f"{recipe}: [pretrain.vision] max_steps = 300 replaced by the command line's train.max_steps=1" in out
    assert "done: 1 steps" in out


def test_flat_override_beats_nested_file_value_and_sets_model_and_data():
    text = MINIMAL + "[pretrain.vl.train]\nlr = 0.5\n"
    assert parse_recipe(text).resolve("pretrain.vl").train.lr == 0.5
    stage = parse_recipe(text, overrides=["pretrain.vl.lr=0.25", "pretrain.vl.image_size=48"]).resolve("pretrain.vl")
    assert stage.train.lr == 0.25
    assert stage.data.image_size == 48 and stage.model.build_config().image_size == 48


def test_stage_without_section_resolves_from_overrides():
    recipe = parse_recipe(MINIMAL, overrides=["eval.nlvr2.dataset=nlvr2"])
    stage = recipe.resolve("eval.nlvr2")
    assert stage.task.dataset == "nlvr2" and stage.task.split == "dev" and stage.train is None
    with pytest.raises(RecipeError, match=r"finetune.vqa.dataset: missing required key"):
        recipe.resolve("finetune.vqa")
    with pytest.raises(RecipeError, match=r'unknown stage .* \(did you mean "finetune.vqa"\?\)'):
        recipe.resolve("finetune.vq")


# ------------------------------------------------------------------------------------------ resolution
def test_resolution_and_types():
    stage = load_recipe("tiny").resolve("finetune.vqa")
    assert isinstance(stage.train, RecipeTrain)
    assert stage.data.image_size == 48 and stage.model.build_config(heads=["pooler", "vqa"]).image_size == 48
    assert stage.train.lr_mult_heads == 20.0 and stage.task.split == "train" and stage.task.val_split == "val"
    assert stage.model.init == "runs/tiny-pretrain-vl"
    # data.image_size 0 means the model's resolution
    assert load_recipe("tiny").resolve("pretrain.vl").data.image_size == 32
    with pytest.raises(AttributeError):
        stage.train.lr = 1.0  # frozen


def test_batch_plan():
    recipe = parse_recipe(MINIMAL.replace("batch_size = 8", "batch_size = 64"))
    plan = recipe.resolve("pretrain.vl").batch_plan(world_size=4)
    assert (plan.micro_batch_size, plan.grad_accum) == (16, 1)
    plan = parse_recipe(MINIMAL, overrides=["data.micro_batch_size=2"]).resolve("pretrain.vl").batch_plan(2)
    assert (plan.micro_batch_size, plan.grad_accum) == (2, 2)
    with pytest.raises(RecipeError, match="not divisible by 3 processes"):
        recipe.resolve("pretrain.vl").batch_plan(world_size=3)


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("name", SHIPPED)
def test_round_trip_recipe(name):
    recipe = load_recipe(name, ["train.run_name=with \"quotes\" and \\ and \t tab", "data.tokenizer=vocab é.txt"])
    again = parse_recipe(recipe.to_toml(), "again.toml")
    assert again == recipe
    for stage in recipe.stage_names():
        resolved = recipe.resolve(stage)
        assert parse_recipe(resolved.to_toml()).resolve(stage) == resolved


def test_round_trip_keeps_optional_none_and_types():
    recipe = parse_recipe(MINIMAL, overrides=["model.layer_scale_init=none", "train.warmup=5"])
    stage = recipe.resolve("pretrain.vl")
    assert stage.model.build_config().layer_scale_init is None
    again = parse_recipe(stage.to_toml()).resolve("pretrain.vl")
    assert again == stage and again.train.warmup == 5 and isinstance(again.train.warmup, int)


def test_dump_toml_escapes():
    data = {"a": {"s": 'x"\\\n\x01\x7f', "f": 1e-8, "l": [1, 2.5, "z"], "b": False, "n": None}}
    text = dump_toml(data)
    # tomli_w writes one array item per line
    assert text == '[a]\ns = "x\\"\\\\\\n\\u0001\\u007f"\nf = 1e-08\nl = [\n    1,\n    2.5,\n    "z",\n]\nb = false\nn = "none"\n'
    assert tomllib.loads(text) == {"a": {**data["a"], "n": "none"}}


def test_recipe_found_by_name_outside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("base").model_size == "base"
    with pytest.raises(RecipeError, match="the shipped recipe of that name is 'base'"):
        load_recipe("recipes/base.toml")
    with pytest.raises(RecipeError, match=r"no recipe file 'bsae' \(did you mean \"base\"\?\)"):
        load_recipe("bsae")


def test_task_keys_do_not_shadow_shared_keys():
    """A flat stage key must have one meaning: task fields never reuse a [train]/[data]/[model] key."""
    from vlmo_cli.config.fields import specs_of
    from vlmo_cli.config.schema import shared_specs

    shared = {k for s in ("train", "data", "model") for k in shared_specs(s)}
    for spec in STAGES.values():
        assert not set(specs_of(spec.task)) & shared, spec.name
    assert PretrainVLTask.__dataclass_params__.frozen
