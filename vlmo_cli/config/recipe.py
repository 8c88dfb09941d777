"""Recipes: load a TOML file (or a shipped name), apply ``key.path=value`` overrides, validate, resolve a stage.

    recipe = load_recipe("base", overrides=["train.lr=1e-4", "pretrain.vl.batch_size=64"])
    stage = recipe.resolve("pretrain.vl")        # ResolvedStage
    stage.train.lr, stage.data.batch_size, stage.model.build_config(), stage.task.mlm_weight

Validation collects every problem (unknown key with a "did you mean", wrong type, out of range, bad choice, missing
required key, inconsistent model) and raises one :class:`RecipeError` listing them, each naming the file, the key
path, the value given and what is allowed. The schema itself lives in :mod:`vlmo_cli.config.schema`.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError, RecipeError
from .fields import FieldSpec, specs_of
from .schema import (
    SHARED_SECTIONS,
    STAGE_GROUPS,
    STAGES,
    RecipeData,
    RecipeModel,
    RecipeTrain,
    ResolvedStage,
    shared_specs,
    stage_sections,
)
from .values import INVALID, check_value, format_value, parse_text, suggest
from .toml import dump_toml

__all__ = [
    "Problem",
    "Recipe",
    "Replacement",
    "RecipeInfo",
    "ResolvedStage",
    "StageOverrides",
    "dump_toml",
    "load_recipe",
    "parse_recipe",
    "read_recipe_text",
    "recipe_path",
    "shipped_recipes",
    "stage_names",
]


# ---------------------------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe: where it came from (file or override), the key path and what is wrong."""

    where: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.message}"


def _raise(problems: list[Problem], source: str) -> None:
    unique = list(dict.fromkeys(problems))
    if not unique:
        return
    n = len(unique)
    lines = [f"recipe {source}: {n} problem{'s' if n > 1 else ''}"] + [f"  {p}" for p in unique]
    error = RecipeError("\n".join(lines))
    error.problems = unique  # type: ignore[attr-defined]
    raise error


# ---------------------------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class Replacement:
    """A file value of a stage section that a command-line override of the shared key replaced."""

    stage: str
    key: str
    file_value: Any
    override: str

    def __str__(self) -> str:
        return f"[{self.stage}] {self.key} = {format_value(self.file_value)} replaced by the command line's {self.override}"


@dataclass(frozen=True)
class StageOverrides:
    """What one stage section sets: its own task keys and the shared keys it overrides."""

    task: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: the shared sections and the stage sections as written (defaults not filled in).

    Use :meth:`resolve` to get the typed settings of one stage.
    """

    model: Mapping[str, Any]
    data: Mapping[str, Any]
    train: Mapping[str, Any]
    stages: Mapping[str, StageOverrides]
    source: str = field(default="<memory>", compare=False)
    description: str = field(default="", compare=False)
    #: shared keys set on the command line, ``(section, key)`` → the override text: they apply to a stage even
    #: where its section sets the key, unless the command line sets that stage key too (``command_line_stage_keys``)
    command_line: Mapping[tuple[str, str], str] = field(default_factory=dict, compare=False)
    command_line_stage_keys: frozenset[tuple[str, str]] = field(default=frozenset(), compare=False)

    @property
    def model_size(self) -> str:
        return self.model.get("size", "")

    def stage_names(self) -> list[str]:
        """The stage sections this recipe configures, in the canonical order."""
        return [name for name in STAGES if name in self.stages]

    def replaced_in(self, stage: str) -> list[Replacement]:
        """The file values of ``stage``'s section that command-line overrides of shared keys replace."""
        ov = self.stages.get(stage, StageOverrides())
        return [
            Replacement(stage, key, getattr(ov, section)[key], text)
            for (section, key), text in self._command_line_for(stage).items()
            if key in getattr(ov, section)
        ]

    def _command_line_for(self, stage: str) -> dict[tuple[str, str], str]:
        """The command-line shared keys that apply to ``stage`` over its own section's values."""
        return {
            (section, key): text
            for (section, key), text in self.command_line.items()
            if section in stage_sections(stage)
            and (stage, key) not in self.command_line_stage_keys
            and key in getattr(self, section)
        }

    def resolve(self, stage: str) -> ResolvedStage:
        """The typed settings of ``stage`` (``"pretrain.vl"``, ``"finetune.vqa"``, ...): stage values over shared ones.

        A shared key set on the command line (``train.lr=1e-4``) wins over the stage's value in the file, unless the
        command line sets the stage key too (:meth:`replaced_in` lists what it replaces). A stage without a section
        resolves from the shared sections alone (its required keys, e.g. ``dataset``, must then come from
        overrides). Raises :class:`RecipeError` listing every problem.
        """
        if stage not in STAGES:
            raise RecipeError(
                f"unknown stage {stage!r}{suggest(stage, STAGES)}; allowed: {', '.join(STAGES)}"
            )
        resolved, problems = _resolve(self, stage, skip_missing=set())
        _raise(problems, self.source)
        assert resolved is not None
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """Nested dict in file layout: stage tables hold task keys flat, overrides in ``train``/``data``/``model``."""
        out: dict[str, Any] = {}
        for name in SHARED_SECTIONS:
            values = dict(getattr(self, name))
            if values:
                out[name] = values
        for name in self.stage_names():
            ov = self.stages[name]
            table: dict[str, Any] = dict(ov.task)
            for section in ("train", "data", "model"):
                if getattr(ov, section):
                    table[section] = dict(getattr(ov, section))
            group, sub = name.split(".")
            out.setdefault(group, {})[sub] = table
        return out

    def to_toml(self) -> str:
        """The recipe as TOML; :func:`parse_recipe` of it gives an equal recipe."""
        header = f"# {self.description}\n" if self.description else ""
        return header + dump_toml(self.to_dict())


def _resolve(recipe: Recipe, stage: str, skip_missing: set[str]) -> tuple[ResolvedStage | None, list[Problem]]:
    """Merge shared and stage values and build the typed stage; problems instead of exceptions.

    Stage values win over shared ones, except shared keys set on the command line (:attr:`Recipe.command_line`).
    """
    spec = STAGES[stage]
    ov = recipe.stages.get(stage, StageOverrides())
    where = recipe.source
    problems: list[Problem] = []
    merged = {
        "model": {**recipe.model, **ov.model},
        "data": {**recipe.data, **ov.data},
        "train": {**recipe.train, **ov.train},
        "task": dict(ov.task),
    }
    for section, key in recipe._command_line_for(stage):
        merged[section][key] = getattr(recipe, section)[key]
    sections = ("task", *stage_sections(stage))
    invalid = any(v is INVALID for s in sections for v in merged[s].values())
    missing = False
    for section in sections:
        specs = specs_of(spec.task) if section == "task" else shared_specs(section)
        for key, fspec in specs.items():
            if not fspec.required or key in merged[section]:
                continue
            missing = True
            if f"{section}.{key}" not in skip_missing:
                where_to = f"[{stage}]" if section == "task" else f"[{section}] or [{stage}]"
                problems.append(
                    Problem(where, f"{stage}.{key}", f"missing required key ({fspec.help}); set it in {where_to}")
                )
    if invalid or missing:
        return None, problems

    model_values = dict(merged["model"])
    model = RecipeModel(size=model_values.pop("size"), init=model_values.pop("init", ""),
                        family=model_values.pop("family", "vlmo"), overrides=model_values)
    try:
        config = model.build_config()
    except ConfigError as exc:
        return None, [Problem(where, f"{stage}.model", str(exc))]
    data_values = dict(merged["data"])
    if not data_values.get("image_size"):
        data_values["image_size"] = config.image_size
    data = RecipeData(**data_values)
    train = RecipeTrain(**merged["train"]) if spec.kind == "train" else None
    task = spec.task(**merged["task"])

    for key, message in getattr(task, "problems", list)():  # a task's rules over several of its keys
        problems.append(Problem(where, f"{stage}.{key}", message))
    if data.image_size % config.patch_size:
        problems.append(
            Problem(
                where, f"{stage}.image_size", f"{data.image_size} is not a multiple of patch_size {config.patch_size}"
            )
        )
    if model.family == "beit3" and data.max_text_len > config.max_text_len:
        problems.append(Problem(where, f"{stage}.max_text_len", f"{data.max_text_len} exceeds the "
                                f"{config.max_text_len} text tokens of the BEiT-3 position table "
                                "(max_source_positions - 2)"))
    if data.micro_batch_size > data.batch_size or (data.micro_batch_size and data.batch_size % data.micro_batch_size):
        problems.append(
            Problem(
                where,
                f"{stage}.micro_batch_size",
                f"got {data.micro_batch_size}; must divide batch_size {data.batch_size}",
            )
        )
    if train is not None:
        if not train.max_steps and not train.max_epochs:
            problems.append(Problem(where, f"{stage}.max_steps", "set max_steps or max_epochs (both are 0)"))
        if isinstance(train.warmup, int) and train.max_steps and train.warmup > train.max_steps:
            problems.append(
                Problem(where, f"{stage}.warmup", f"got {train.warmup}; exceeds max_steps {train.max_steps}")
            )
        if train.end_lr > train.lr:
            problems.append(Problem(where, f"{stage}.end_lr", f"got {format_value(train.end_lr)}; exceeds lr {format_value(train.lr)}"))
    if problems:
        return None, problems
    return ResolvedStage(name=stage, kind=spec.kind, model=model, data=data, train=train, task=task, source=where), []


# ---------------------------------------------------------------------------------------------- validation of raw TOML
def _validate_table(
    table: Mapping[str, Any], specs: Mapping[str, FieldSpec], path: str, origin: _Origins
) -> tuple[dict[str, Any], list[Problem]]:
    out: dict[str, Any] = {}
    problems = []
    for key, value in table.items():
        keypath = f"{path}.{key}"
        if key not in specs:
            problems.append(
                Problem(origin(keypath), keypath, f"unknown key in [{path}]{suggest(key, specs)}; allowed: "
                        + ", ".join(specs))
            )
            continue
        typed, message = check_value(value, specs[key])
        if message:
            problems.append(Problem(origin(keypath), keypath, message))
        out[key] = typed
    return out, problems


def _stage_targets(stage: str, key: str) -> list[str]:
    """Which parts a flat key of a stage section sets: its task field, else every shared section declaring it."""
    if key in specs_of(STAGES[stage].task):
        return ["task"]
    return [s for s in stage_sections(stage) if key in shared_specs(s)]


def _validate_stage(table: Mapping[str, Any], stage: str, origin: _Origins) -> tuple[StageOverrides, list[Problem]]:
    """Route each key of a stage section to the task or the shared section(s) it overrides, and check it.

    Flat keys come first and nested ``[stage.train]``/``[stage.data]``/``[stage.model]`` tables after, so the more
    specific nested form wins when both set a key.
    """
    parts: dict[str, dict[str, Any]] = {"task": {}, "train": {}, "data": {}, "model": {}}
    problems: list[Problem] = []
    allowed_sections = stage_sections(stage)
    task_specs = specs_of(STAGES[stage].task)
    nested = {k: v for k, v in table.items() if k in ("train", "data", "model") and isinstance(v, dict)}
    for key, value in table.items():
        if key in nested:
            continue
        keypath = f"{stage}.{key}"
        targets = _stage_targets(stage, key)
        if not targets:
            candidates = [*task_specs, *(k for s in allowed_sections for k in shared_specs(s))]
            problems.append(
                Problem(
                    origin(keypath),
                    keypath,
                    f"unknown key in [{stage}]{suggest(key, candidates)}; allowed: its own keys "
                    f"({', '.join(task_specs) or 'none'}) or any key of "
                    + ", ".join(f"[{s}]" for s in allowed_sections),
                )
            )
            continue
        for target in targets:
            specs = task_specs if target == "task" else shared_specs(target)
            typed, message = check_value(value, specs[key])
            parts[target][key] = typed
            if message:
                problems.append(Problem(origin(keypath), keypath, message))
                for other in targets:
                    parts[other][key] = INVALID
                break
    for section, values in nested.items():
        keypath = f"{stage}.{section}"
        if section not in allowed_sections:
            problems.append(Problem(origin(keypath), keypath, f"[{stage}] takes no [{section}] settings"))
            continue
        checked, found = _validate_table(values, shared_specs(section), keypath, origin)
        parts[section].update(checked)
        problems += found
    return StageOverrides(**parts), problems


class _Origins:
    """Where each key path came from: the file, unless a command-line override set it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.overridden: dict[str, str] = {}

    def __call__(self, keypath: str) -> str:
        for prefix, label in self.overridden.items():
            if keypath == prefix or keypath.startswith(prefix + "."):
                return label
        return self.source


def _validate(
    raw: Mapping[str, Any], source: str, origin: _Origins, description: str = ""
) -> tuple[Recipe, list[Problem]]:
    problems: list[Problem] = []
    shared: dict[str, dict[str, Any]] = {s: {} for s in SHARED_SECTIONS}
    stages: dict[str, StageOverrides] = {}
    top_allowed = [*SHARED_SECTIONS, *STAGE_GROUPS]
    for top, value in raw.items():
        if top not in top_allowed:
            problems.append(
                Problem(origin(top), top, f"unknown section [{top}]{suggest(top, top_allowed)}; allowed: "
                        + ", ".join(f"[{t}]" for t in top_allowed))
            )
            continue
        if not isinstance(value, dict):
            problems.append(Problem(origin(top), top, f"got {format_value(value)}; expected a table [{top}]"))
            continue
        if top in SHARED_SECTIONS:
            shared[top], found = _validate_table(value, shared_specs(top), top, origin)
            problems += found
            continue
        group_stages = [s for s in STAGES if s.startswith(top + ".")]
        for sub, table in value.items():
            name = f"{top}.{sub}"
            if name not in STAGES:
                problems.append(
                    Problem(origin(name), name, f"unknown section [{name}]{suggest(name, group_stages)}; allowed: "
                            + ", ".join(f"[{s}]" for s in group_stages))
                )
            elif not isinstance(table, dict):
                problems.append(Problem(origin(name), name, f"got {format_value(table)}; expected a table [{name}]"))
            else:
                stages[name], found = _validate_stage(table, name, origin)
                problems += found
    recipe = Recipe(
        model=shared["model"],
        data=shared["data"],
        train=shared["train"],
        stages={k: stages[k] for k in STAGES if k in stages},
        source=source,
        description=description,
    )
    problems += _check_required(recipe)
    return recipe, problems


def _check_required(recipe: Recipe) -> list[Problem]:
    """Resolve every stage present; a shared required key missing everywhere is reported once, not per stage."""
    problems: list[Problem] = []
    skip: set[str] = set()
    present = recipe.stage_names()
    for section in SHARED_SECTIONS:
        users = [s for s in present if section in stage_sections(s)]
        for key, spec in shared_specs(section).items():
            if not spec.required or key in getattr(recipe, section):
                continue
            if all(key not in getattr(recipe.stages[s], section) for s in users) and (users or section == "model"):
                allowed = f"; allowed: {', '.join(map(str, spec.choices))}" if spec.choices else ""
                message = f"missing required key ({spec.help}); set it in [{section}]{allowed}"
                problems.append(Problem(recipe.source, f"{section}.{key}", message))
                skip.add(f"{section}.{key}")
    for stage in present:
        problems += _resolve(recipe, stage, skip)[1]
    return problems


# ---------------------------------------------------------------------------------------------- overrides
def _apply_override(raw: dict[str, Any], text: str, origin: _Origins) -> list[Problem]:
    """Set one ``key.path=value`` in the raw TOML dict, typed by the declared field; problems if it cannot be."""
    label = f"override {text!r}"
    keypath, sep, value_text = text.partition("=")
    keypath = keypath.strip()
    if not sep or not keypath:
        hint = ""
        if keypath.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            hint = "; flags such as --overwrite take no value (drop the word after the flag)"
        return [Problem(label, keypath or text, f"expected key.path=value (e.g. train.lr=1e-4){hint}")]
    parts = keypath.split(".")
    target: list[str] | None = None
    spec: FieldSpec | None = None
    if len(parts) == 2 and parts[0] in SHARED_SECTIONS:
        spec = shared_specs(parts[0]).get(parts[1])
        target = parts
    elif len(parts) >= 3 and ".".join(parts[:2]) in STAGES:
        stage, rest = ".".join(parts[:2]), parts[2:]
        if len(rest) == 1:
            targets = _stage_targets(stage, rest[0])
            if targets:
                specs = specs_of(STAGES[stage].task) if targets[0] == "task" else shared_specs(targets[0])
                spec = specs[rest[0]]
        elif len(rest) == 2 and rest[0] in stage_sections(stage):
            spec = shared_specs(rest[0]).get(rest[1])
        target = parts
    if spec is None or target is None:
        suggestion = suggest(keypath, _all_key_paths()) or (
            "; key paths look like train.lr, data.batch_size, model.size, pretrain.vl.batch_size"
        )
        return [Problem(label, keypath, f"unknown key{suggestion}")]
    value = parse_text(value_text, spec.type)
    typed, message = check_value(value, spec)
    if message:
        return [Problem(label, keypath, message)]
    table = raw
    for part in target[:-1]:
        child = table.get(part)
        if not isinstance(child, dict):
            child = table[part] = {}
        table = child
    table[target[-1]] = list(typed) if isinstance(typed, tuple) else typed
    if len(target) == 3:  # a flat stage key: drop the same key from the nested tables so the override wins
        for section in ("train", "data", "model"):
            nested = table.get(section)
            if isinstance(nested, dict):
                nested.pop(target[-1], None)
    origin.overridden[keypath] = label
    return []


def _override_targets(overrides: Iterable[str]) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]]]:
    """Which shared keys (``(section, key)`` → override text) and which stage keys (``(stage, key)``) the command
    line sets; malformed items are left to :func:`_apply_override` to report."""
    shared: dict[tuple[str, str], str] = {}
    staged: set[tuple[str, str]] = set()
    for text in overrides:
        keypath, sep, _ = text.partition("=")
        parts = keypath.strip().split(".")
        if not sep:
            continue
        if len(parts) == 2 and parts[0] in SHARED_SECTIONS:
            shared[(parts[0], parts[1])] = text.strip()
        elif len(parts) in (3, 4) and ".".join(parts[:2]) in STAGES:
            staged.add((".".join(parts[:2]), parts[-1]))
    return shared, staged


def _all_key_paths() -> list[str]:
    paths = [f"{s}.{k}" for s in SHARED_SECTIONS for k in shared_specs(s)]
    for stage in STAGES:
        paths += [f"{stage}.{k}" for k in specs_of(STAGES[stage].task)]
        paths += [f"{stage}.{k}" for s in stage_sections(stage) for k in shared_specs(s)]
    return paths


# ---------------------------------------------------------------------------------------------- loading
def parse_recipe(text: str, source: str = "<string>", overrides: Iterable[str] = ()) -> Recipe:
    """Parse, override and validate recipe TOML text; raises :class:`RecipeError` listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if match:
            message = message[: match.start()].strip()
            raise RecipeError(
                f"recipe {source}: invalid TOML at line {match[1]}, column {match[2]}: {message}"
            ) from None
        raise RecipeError(f"recipe {source}: invalid TOML: {message}") from None
    overrides = list(overrides)
    origin = _Origins(source)
    problems: list[Problem] = []
    for item in overrides:
        problems += _apply_override(raw, item, origin)
    recipe, found = _validate(raw, source, origin, _description(text))
    _raise(problems + found, source)
    shared, staged = _override_targets(overrides)
    return dataclasses.replace(recipe, command_line=shared, command_line_stage_keys=frozenset(staged))


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Load a recipe file or a shipped recipe by name (``tiny``, ``base``, ``base_plus``, ``large``).

    ``overrides`` are ``key.path=value`` strings: ``train.lr=1e-4``, ``pretrain.vl.batch_size=64``, ``model.size=tiny``.
    """
    path = recipe_path(name_or_path)
    text = read_recipe_text(path)
    source = str(name_or_path) if Path(str(name_or_path)).exists() else str(path)
    return parse_recipe(text, source=source, overrides=overrides)


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file; a file that cannot be read or is not UTF-8 text is a :class:`RecipeError`."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"recipe {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"recipe {path}: invalid TOML at line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
            "a recipe is a TOML text file"
        ) from None


def _shipped_dir() -> Path:
    return Path(str(importlib.resources.files("vlmo_cli").joinpath("recipes")))


def recipe_path(name_or_path: str | Path) -> Path:
    """The file a recipe argument names: an existing path, else a shipped recipe name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = {p.stem: p for p in sorted(_shipped_dir().glob("*.toml"))}
    key = str(name_or_path)
    if key in shipped:
        return shipped[key]
    if path.suffix == ".toml" and path.stem in shipped and not path.exists():
        hint = f"; the shipped recipe of that name is {path.stem!r}"
    else:
        hint = suggest(key, shipped)
    raise RecipeError(f"no recipe file {key!r}{hint}; shipped recipes: {', '.join(shipped)}")


@dataclass(frozen=True)
class RecipeInfo:
    """A shipped recipe for listings."""

    name: str
    path: Path
    model_size: str
    description: str


def shipped_recipes() -> list[RecipeInfo]:
    """The recipes installed with the package (``vlmo_cli/recipes/*.toml``)."""
    out = []
    for path in sorted(_shipped_dir().glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        try:
            size = tomllib.loads(text).get("model", {}).get("size", "?")
        except tomllib.TOMLDecodeError:
            size = "?"
        out.append(RecipeInfo(path.stem, path, str(size), _description(text)))
    return out


def stage_names() -> list[str]:
    """Every stage or task a recipe can configure."""
    return list(STAGES)


def _description(text: str) -> str:
    """The first comment line of the file (the header's title)."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        break
    return ""
