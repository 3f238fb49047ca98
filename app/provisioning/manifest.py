"""PROVISIONING_MANIFEST: the YAML schema, and errors that name each bad key and its line.

Validated as a whole before anything in it runs: a manifest with one bad key
installs nothing, downloads nothing and adds no program. Its size, its number of
YAML nodes and their depth are checked before and while it is parsed, so a huge or
deeply nested document is refused quickly, with the line where it went over.
"""
from __future__ import annotations

import re
import shlex
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app import portal_config, validation

PROGRAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
RESERVED = validation.OWN_PROGRAMS | {"vllm"}  # and the default instance's
# apt and pip names/specifiers: no option (leading -), no whitespace, no shell syntax.
PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:=<>!~,\[\]@/-]*")
MAX_BYTES = 256 * 1024  # the manifest's text, UTF-8
MAX_NODES = 20_000      # YAML nodes: every key, value and list item counts one (an alias counts what it copies)
MAX_DEPTH = 20          # nested mappings and lists
MAX_PROBLEMS = 50       # problems listed; more are counted


class ManifestError(ValueError):
    """Every problem in a manifest, one line each: `line N: key.path: message`."""

    def __init__(self, problems: list[str]):
        super().__init__("PROVISIONING_MANIFEST is not valid:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _package(value: str) -> str:
    if not PACKAGE.fullmatch(value):
        raise ValueError(f"{value!r} is not a package name or specifier (no spaces, options or shell syntax)")
    return value


class Model(_Strict):
    """A Hugging Face repository to download into the model cache (HF_HOME)."""
    repo: str
    revision: str | None = None
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", value):
            raise ValueError(f"{value!r} is not a Hugging Face repository id (owner/name)")
        return value


class File(_Strict):
    """A file fetched over http(s) to `dest` (relative paths are under the workspace)."""
    url: str
    dest: str
    sha256: str | None = None
    mode: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://\S+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("dest")
    @classmethod
    def _dest(cls, value: str) -> str:
        validation.plain_text(value, "dest")
        if not value.strip():
            raise ValueError("dest is empty")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value):
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return value

    @field_validator("mode")
    @classmethod
    def _mode(cls, value):
        if value is not None and not re.fullmatch(r"0?[0-7]{3}", value):
            raise ValueError("mode must be octal, like '0755' (quote it)")
        return value


class Program(_Strict):
    """An extra supervisor program (its log: <log dir>/<name>.log)."""
    name: str
    command: list[str]
    environment: dict[str, str] = Field(default_factory=dict)
    directory: str | None = None
    autostart: bool = True
    autorestart: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not PROGRAM_NAME.fullmatch(value):
            raise ValueError(f"program name {value!r} must match [a-z0-9][a-z0-9_-]{{0,31}}")
        if value in RESERVED:
            raise ValueError(f"program name {value!r} is the appliance's own")
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any):
        if isinstance(value, str):
            return validation.split_args(value, "command")
        return value

    @field_validator("command")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("command is empty")
        return validation.engine_args(value)

    _env = field_validator("environment")(lambda cls, v: validation.env_vars(v))

    @field_validator("directory")
    @classmethod
    def _directory(cls, value):
        if value is not None:
            validation.plain_text(value, "directory")
            if not value.strip():
                raise ValueError("directory is empty")
            if re.search(r"\s[;#]", value):
                raise ValueError("directory must not hold a space followed by ; or # (supervisor reads a comment)")
        return value


Package = Annotated[str, AfterValidator(_package)]


class Manifest(_Strict):
    apt: list[Package] = Field(default_factory=list)
    pip: list[Package] = Field(default_factory=list)
    models: list[Model] = Field(default_factory=list)
    files: list[File] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    programs: list[Program] = Field(default_factory=list)
    apps: list[str] = Field(default_factory=list)

    _env = field_validator("env")(lambda cls, v: validation.env_vars(v))

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: Any):
        # `- owner/name` is short for `- repo: owner/name`
        return [{"repo": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("apps")
    @classmethod
    def _apps(cls, value: list[str]) -> list[str]:
        for entry in value:
            portal_config.parse(entry)
        return value

    @model_validator(mode="after")
    def _unique(self):
        names = [p.name for p in self.programs]
        duplicate = sorted({n for n in names if names.count(n) > 1})
        if duplicate:
            raise ValueError(f"programs: {duplicate[0]!r} is defined twice")
        return self

    @property
    def portal_entries(self) -> str:
        return "|".join(self.apps)

    def summary(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in (("apt", self.apt), ("pip", self.pip), ("models", self.models),
                                               ("files", self.files), ("env", self.env),
                                               ("programs", self.programs), ("apps", self.apps)) if v]
        return ", ".join(parts) or "empty"


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting nodes and depth as it composes them: it stops at the first one over a limit."""

    sizes: dict[int, int]

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth, self.nodes, self.sizes = 0, 0, {}  # sizes: nodes under each composed node, for its aliases

    def _over(self, message: str):
        mark = self.peek_event().start_mark
        return ManifestError([f"line {mark.line + 1}: {message}"])

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            anchored = self.anchors.get(self.peek_event().anchor)
            if anchored is not None and id(anchored) not in self.sizes:
                raise self._over("an alias inside the value it refers to (a recursive document)")
            self.nodes += self.sizes.get(id(anchored), 1)
        else:
            self.nodes += 1
            self.depth += 1
        if self.nodes > MAX_NODES:
            raise self._over(f"more than {MAX_NODES} YAML nodes (keys, values and list items; the limit)")
        if self.depth > MAX_DEPTH:
            raise self._over(f"nested deeper than {MAX_DEPTH} levels (the limit)")
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        before = self.nodes
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        self.sizes[id(node)] = self.nodes - before + 1
        return node


def _load(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for error lines) and its data, within the limits."""
    size = len(text.encode(errors="replace"))
    if size > MAX_BYTES:
        raise ManifestError([f"the manifest is {size} bytes: at most {MAX_BYTES} (the limit)"])
    loader = _LimitedLoader(text)
    try:
        root = loader.get_single_node()
        return root, loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()


def _node_at(node: yaml.Node | None, loc: tuple) -> yaml.Node | None:
    """The YAML node at a pydantic error location (as deep as it goes); the key's node for a mapping key."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    node = value if part != loc[-1] else key
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def parse(text: str, source: str = "PROVISIONING_MANIFEST") -> Manifest:
    """The manifest, or ManifestError listing every bad key with its line."""
    try:
        root, data = _load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ManifestError([f"{where}not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError(["line 1: the manifest must be a mapping (apt:, pip:, models:, ...)"])
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems, errors = [], exc.errors()
        for error in errors[:MAX_PROBLEMS]:
            loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            node = _node_at(root, loc)
            line = f"line {node.start_mark.line + 1}: " if node is not None else ""
            key = ".".join(map(str, loc)) or "(top)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown key (allowed here: {_allowed(loc)})"
            problems.append(f"{line}{key}: {message}")
        if len(errors) > MAX_PROBLEMS:
            problems.append(f"... and {len(errors) - MAX_PROBLEMS} more problems")
        raise ManifestError(problems) from None


def _allowed(loc: tuple) -> str:
    model: type[BaseModel] = Manifest
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields.get(part)
        inner = getattr(annotation, "annotation", None)
        args = getattr(inner, "__args__", ())
        nested = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is None:
            break
        model = nested
    return ", ".join(model.model_fields)


def quote_command(argv: list[str]) -> str:
    return shlex.join(argv)
