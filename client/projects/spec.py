"""MLflow's ``MLproject`` format: entry points, typed parameters with defaults, the command
each runs; and the bare ``.py``/``.sh`` entry points of a folder without one. Reads, checks and
formats; runs nothing."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steppe.errors import SteppeError

MLPROJECT_FILE = "MLproject"
PARAM_TYPES = ("string", "float", "path", "uri")


class ExecutionException(SteppeError):
    """A project that cannot run as asked: a bad MLproject, a missing or mistyped
    parameter, an unknown entry point, an environment that cannot be built."""

    error_code = "INVALID_PARAMETER_VALUE"


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str = "string"
    default: str | None = None

    def format(self, value: str) -> str:
        """``value`` checked against the type and as the command will get it."""
        if self.type == "float":
            try:
                float(value)
            except ValueError:
                raise ExecutionException(
                    f"Parameter {self.name!r} has type float, and {value!r} is not a number"
                ) from None
        elif self.type == "path" and "://" not in value:
            path = Path(value).expanduser()
            if not path.is_absolute():
                path = Path.cwd() / path
            return str(path)
        return value


@dataclass(frozen=True)
class EntryPoint:
    name: str
    command: str
    parameters: dict[str, Parameter] = field(default_factory=dict)

    def resolve(self, given: Mapping[str, Any]) -> dict[str, str]:
        """Every declared parameter's value (given, else its default) plus the undeclared
        ones given; a declared parameter with neither is refused, naming it."""
        missing = [
            p.name for p in self.parameters.values() if p.default is None and p.name not in given
        ]
        if missing:
            raise ExecutionException(
                f"No value given for missing parameters: {', '.join(repr(m) for m in missing)} "
                f"(entry point {self.name!r}); pass them with -P name=value"
            )
        values: dict[str, str] = {}
        for name, param in self.parameters.items():
            raw = given.get(name, param.default)
            values[name] = param.format(str(raw))
        for name, raw in given.items():
            if name not in self.parameters:
                values[name] = str(raw)
        return values

    def render(self, values: Mapping[str, str]) -> str:
        """The shell command: declared parameters substituted (shell-quoted) into
        ``{name}``, undeclared ones appended as ``--name value``, as MLflow does."""
        declared = {k: shlex.quote(v) for k, v in values.items() if k in self.parameters}
        try:
            command = self.command.format(**declared)
        except (KeyError, IndexError) as exc:
            raise ExecutionException(
                f"Entry point {self.name!r}: its command names {exc} which is not a parameter"
            ) from None
        extra = [f"--{k} {shlex.quote(v)}" for k, v in values.items() if k not in self.parameters]
        return " ".join([command, *extra])


@dataclass(frozen=True)
class Project:
    folder: Path
    name: str | None
    entry_points: dict[str, EntryPoint]
    python_env: Path | None = None
    conda_env: Path | None = None
    docker_env: bool = False

    def entry_point(self, name: str) -> EntryPoint:
        if name in self.entry_points:
            return self.entry_points[name]
        target = self.folder / name
        if name.endswith(".py") and target.is_file():
            return EntryPoint(name, f"python {shlex.quote(name)}")
        if name.endswith(".sh") and target.is_file():
            return EntryPoint(name, f"bash {shlex.quote(name)}")
        known = ", ".join(sorted(self.entry_points)) or "none"
        raise ExecutionException(
            f"Could not find entry point {name!r} in {self.folder}: the MLproject has {known}; "
            "a .py or .sh file in the project folder also works"
        )


def _parameter(entry: str, name: str, raw: Any) -> Parameter:
    if isinstance(raw, str):
        spec: dict[str, Any] = {"type": raw}
    elif isinstance(raw, Mapping):
        spec = dict(raw)
    else:
        raise ExecutionException(
            f"MLproject: parameter {name!r} of entry point {entry!r} must be a type name or "
            "a mapping with 'type' and 'default'"
        )
    kind = str(spec.get("type", "string"))
    if kind not in PARAM_TYPES:
        raise ExecutionException(
            f"MLproject: parameter {name!r} of entry point {entry!r} has type {kind!r}; "
            f"types are {', '.join(PARAM_TYPES)}"
        )
    default = spec.get("default")
    return Parameter(name, kind, None if default is None else str(default))


def load(folder: str | os.PathLike[str]) -> Project:
    """The project in ``folder``: its MLproject file if there is one, else a project whose
    entry points are the folder's .py and .sh files."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise ExecutionException(f"Project folder {root} does not exist")
    spec_file = next((p for p in (root / MLPROJECT_FILE, root / "mlproject") if p.is_file()), None)
    if spec_file is None:
        return Project(root, root.name, {})
    from steppe.models.model import yaml_module

    try:
        raw = yaml_module().safe_load(spec_file.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # YAML errors come in several classes: report any of them
        raise ExecutionException(f"MLproject in {root} is not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ExecutionException(f"MLproject in {root} must be a mapping")
    envs = [k for k in ("python_env", "conda_env", "docker_env") if k in raw]
    if len(envs) > 1:
        raise ExecutionException(f"MLproject: give at most one of {', '.join(envs)}")
    entry_points: dict[str, EntryPoint] = {}
    for name, body in (raw.get("entry_points") or {}).items():
        if not isinstance(body, Mapping) or not isinstance(body.get("command"), str):
            raise ExecutionException(f"MLproject: entry point {name!r} needs a 'command'")
        params = {
            str(p): _parameter(str(name), str(p), spec)
            for p, spec in (body.get("parameters") or {}).items()
        }
        entry_points[str(name)] = EntryPoint(str(name), body["command"], params)

    def env_file(key: str) -> Path | None:
        value = raw.get(key)
        if value is None:
            return None
        path = (root / str(value)).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ExecutionException(
                f"MLproject: {key} {value!r} must be a file inside the project folder"
            )
        return path

    return Project(
        root,
        raw.get("name"),
        entry_points,
        python_env=env_file("python_env"),
        conda_env=env_file("conda_env"),
        docker_env="docker_env" in raw,
    )
