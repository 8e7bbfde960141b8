"""steppe.projects: run MLflow Projects (an ``MLproject`` folder, a bare .py/.sh entry point,
or a git repository) as a steppe run, like ``mlflow run``.

    submitted = steppe.projects.run(".", entry_point="main", parameters={"alpha": 0.5})
    submitted.get_status()          # FINISHED / FAILED

The command runs in a child process attached to the run through ``MLFLOW_RUN_ID`` and
``MLFLOW_TRACKING_URI`` (the steppe server's HTTP address), so ``import steppe`` and
``import mlflow`` inside the project both log into it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steppe.projects.environment import ENV_MANAGERS, prepare
from steppe.projects.spec import ExecutionException, Project, load

__all__ = ["ENV_MANAGERS", "ExecutionException", "SubmittedRun", "run"]

_GIT_PREFIXES = ("https://", "http://", "git@", "ssh://", "git+", "file://")


class SubmittedRun:
    """A project run that ``run`` started: ``wait()`` for its command, ``get_status()``."""

    def __init__(self, run_id: str, process: subprocess.Popen[bytes], finish: Any) -> None:
        self.run_id = run_id
        self._process = process
        self._finish = finish
        self._status: str | None = None

    def wait(self) -> bool:
        """Wait for the command; True if it succeeded. Ends the run (FINISHED/FAILED)."""
        if self._status is None:
            try:
                code = self._process.wait()
            except KeyboardInterrupt:
                self._process.send_signal(signal.SIGINT)
                self._process.wait()
                self._status = "KILLED"
                self._finish("KILLED")
                raise
            self._status = "FINISHED" if code == 0 else "FAILED"
            self._finish(self._status)
        return self._status == "FINISHED"

    def get_status(self) -> str:
        if self._status is not None:
            return self._status
        return (
            "RUNNING"
            if self._process.poll() is None
            else ("FINISHED" if self._process.returncode == 0 else "FAILED")
        )

    def cancel(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait()
        if self._status is None:
            self._status = "KILLED"
            self._finish("KILLED")

    @property
    def returncode(self) -> int | None:
        return self._process.returncode


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False
        )
    except OSError:  # no git on this machine: no git tags
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _fetch(uri: str, version: str | None, workdir: Path) -> tuple[Path, str | None]:
    """(project folder, repository URL) for a local path or a git URI (``uri#subdir``)."""
    base, _, subdir = uri.partition("#")
    repo: str | None
    if base.startswith(_GIT_PREFIXES) or base.endswith(".git"):
        target = workdir / "repo"
        clone = ["git", "clone", "--quiet", base.removeprefix("git+"), str(target)]
        done = subprocess.run(clone, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ExecutionException(f"git clone {base} failed: {done.stderr.strip()}")
        if version:
            checkout = _git(target, "checkout", "--quiet", version)
            if checkout is None:
                raise ExecutionException(f"{base} has no version {version!r}")
        folder, repo = target, base
    else:
        folder = Path(base).expanduser().resolve()
        if version:
            raise ExecutionException("--version needs a git URI, not a local folder")
        repo = _git(folder, "config", "--get", "remote.origin.url")
    if subdir:
        inner = (folder / subdir).resolve()
        if not inner.is_relative_to(folder) or not inner.is_dir():
            raise ExecutionException(f"{uri}: {subdir!r} is not a folder of the project")
        folder = inner
    return folder, repo


def _parameters(given: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (given or {}).items()}


def run(
    uri: str,
    entry_point: str = "main",
    version: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    experiment_name: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    env_manager: str | None = None,
    synchronous: bool = True,
    tracking_uri: str | None = None,
    backend: str = "local",
    tags: Mapping[str, Any] | None = None,
) -> SubmittedRun:
    """Run a project's entry point as a new run and (``synchronous``) wait for it; raises
    ExecutionException if the command fails, as ``mlflow.projects.run`` does."""
    if backend != "local":
        raise ExecutionException(f"backend {backend!r} is not supported: steppe runs 'local'")
    if experiment_name is not None and experiment_id is not None:
        raise ExecutionException("give experiment_name or experiment_id, not both")
    manager = env_manager or "local"
    workdir = Path(tempfile.mkdtemp(prefix="steppe-project-"))
    folder, repo = _fetch(uri, version, workdir)
    project: Project = load(folder)
    entry = project.entry_point(entry_point)
    values = entry.resolve(_parameters(parameters))  # refused here: before any run exists
    command = entry.render(values)
    bin_dir = prepare(project, manager)

    from steppe.tracking import Client

    client = Client(tracking_uri)
    if experiment_id is None:
        if experiment_name:
            experiment_id = client.set_experiment(experiment_name).experiment_id
        else:  # MLFLOW_EXPERIMENT_NAME/_ID, set_experiment, else Default: as start_run
            from steppe import fluent

            experiment_id = fluent._resolve_experiment_id(client)
    commit = _git(folder, "rev-parse", "HEAD")
    run_tags = {
        "mlflow.source.name": repo or str(folder),
        "mlflow.source.type": "PROJECT",
        "mlflow.project.entryPoint": entry.name,
        "mlflow.project.backend": "local",
        "mlflow.project.env": manager,
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    if commit:
        run_tags["mlflow.source.git.commit"] = commit
        if repo:
            run_tags["mlflow.source.git.repoURL"] = repo
        branch = _git(folder, "rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":
            run_tags["mlflow.source.git.branch"] = branch
    created = client.create_run(str(experiment_id), run_name=run_name, tags=run_tags)
    run_id = created.info.run_id
    from steppe.entities import Param

    if values:
        client.log_batch(run_id, params=[Param(k, v) for k, v in values.items()])
    client.flush()
    http_url = client._http_url  # the server both steppe and mlflow clients reach
    env = {
        **os.environ,
        "MLFLOW_RUN_ID": run_id,
        "MLFLOW_TRACKING_URI": http_url,
        "STEPPE_TRACKING_URI": http_url,
        "MLFLOW_EXPERIMENT_ID": str(experiment_id),
    }
    env.pop("STEPPE_RUN_ID", None)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    else:  # local: `python` in the command is this Python, the one steppe runs in
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    print(
        f"steppe run: run {run_id} (experiment {experiment_id}): {command}",
        file=sys.stderr,
        flush=True,
    )

    def finish(status: str) -> None:
        client.set_terminated(run_id, status)

    try:
        process = subprocess.Popen(["bash", "-c", command], cwd=folder, env=env)
    except OSError as exc:
        finish("FAILED")
        raise ExecutionException(f"could not start {shlex.quote(command)}: {exc}") from None
    submitted = SubmittedRun(run_id, process, finish)
    if synchronous and not submitted.wait():
        raise ExecutionException(
            f"Run (ID '{run_id}') failed: the command exited with {process.returncode}"
        )
    return submitted
