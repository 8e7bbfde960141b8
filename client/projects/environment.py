"""Where a project's command runs: this Python (``local``), or a virtual environment built
from its ``python_env.yaml`` with ``python -m venv`` (``virtualenv``) or ``uv`` — no pyenv, no
conda — kept in a cache by the hash of what defines it, so a changed file builds a new one."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from steppe.projects.spec import ExecutionException, Project

ENV_MANAGERS = ("local", "virtualenv", "uv")
_READY = ".steppe-env-ready"


def cache_dir() -> Path:
    """STEPPE_PROJECT_ENV_DIR, else ~/.cache/steppe/envs (XDG_CACHE_HOME respected)."""
    raw = os.environ.get("STEPPE_PROJECT_ENV_DIR")
    if raw:
        return Path(raw).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "steppe" / "envs"


def _python_env(project: Project) -> dict[str, Any]:
    if project.python_env is None:
        return {"python": None, "build_dependencies": [], "dependencies": []}
    from steppe.models.model import yaml_module

    raw = yaml_module().safe_load(project.python_env.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ExecutionException(f"{project.python_env} must be a mapping")
    return raw


def _interpreter(wanted: str | None) -> str:
    """A Python of the version python_env.yaml asks for: this one if it matches, else
    ``pythonX.Y`` on PATH; never a download."""
    here = ".".join(map(str, sys.version_info[:3]))
    if not wanted or here == str(wanted) or here.startswith(f"{wanted}."):
        return sys.executable
    short = ".".join(str(wanted).split(".")[:2])
    found = shutil.which(f"python{short}")
    if found:
        return found
    raise ExecutionException(
        f"python_env.yaml asks for Python {wanted}; this is {here} and there is no "
        f"python{short} on PATH. Install it, or run with --env-manager local."
    )


def _requirements(project: Project, deps: list[Any]) -> list[str]:
    """The pip arguments: ``-r file`` entries made absolute inside the project folder."""
    out: list[str] = []
    for dep in deps:
        text = str(dep).strip()
        if text.startswith("-r"):
            target = (project.folder / text[2:].strip()).resolve()
            if not target.is_relative_to(project.folder) or not target.is_file():
                raise ExecutionException(f"python_env.yaml: {text!r} is not a file in the project")
            out += ["-r", str(target)]
        else:
            out.append(text)
    return out


def _digest(project: Project, python: str, manager: str, deps: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{manager}\0{python}\0".encode())
    for item in deps:
        digest.update(item.encode() + b"\0")
        if os.path.isfile(item):  # the -r files' contents count, not just their names
            digest.update(Path(item).read_bytes())
    return digest.hexdigest()[:20]


def _run(argv: list[str], what: str) -> None:
    print(f"steppe run: {what}: {' '.join(argv)}", file=sys.stderr, flush=True)
    done = subprocess.run(argv, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if done.returncode != 0:
        raise ExecutionException(f"{what} failed (exit {done.returncode}): {' '.join(argv)}")


def prepare(project: Project, manager: str) -> Path | None:
    """The bin/ folder of the environment to run in (None: this process's environment)."""
    if manager not in ENV_MANAGERS:
        if manager == "conda":
            raise ExecutionException(
                "--env-manager conda is not supported: use virtualenv or uv (both read "
                "python_env.yaml) or local"
            )
        raise ExecutionException(
            f"--env-manager {manager!r}: must be one of {', '.join(ENV_MANAGERS)}"
        )
    if project.docker_env:
        raise ExecutionException("docker_env projects are not supported by steppe run")
    if manager == "local":
        return None
    if project.conda_env is not None and project.python_env is None:
        raise ExecutionException(
            "This project declares only a conda_env; steppe builds environments from "
            "python_env.yaml (virtualenv/uv). Add one, or run with --env-manager local."
        )
    spec = _python_env(project)
    python = _interpreter(spec.get("python"))
    build = _requirements(project, list(spec.get("build_dependencies") or []))
    deps = _requirements(project, list(spec.get("dependencies") or []))
    if manager == "uv" and shutil.which("uv") is None:
        raise ExecutionException("--env-manager uv: uv is not on PATH (pip install uv)")
    env = cache_dir() / f"{manager}-{_digest(project, python, manager, build + deps)}"
    if (env / _READY).is_file():
        print(f"steppe run: reusing the environment {env}", file=sys.stderr, flush=True)
        return env / "bin"
    env.parent.mkdir(parents=True, exist_ok=True)
    # A venv hard-codes its own path, so it is built where it will live; the ready marker,
    # written last, is what makes it reusable: a build that failed half-way is rebuilt.
    shutil.rmtree(env, ignore_errors=True)
    try:
        if manager == "uv":
            _run(["uv", "venv", "--python", python, str(env)], "creating the environment")
            pip = ["uv", "pip", "install", "--python", str(env / "bin" / "python")]
        else:
            _run([python, "-m", "venv", str(env)], "creating the environment")
            pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        if manager != "uv" and build:
            _run([*pip, *build], "installing build dependencies")
        if deps:
            _run([*pip, *deps], "installing dependencies")
        (env / _READY).write_text("ok\n")
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise
    return env / "bin"
