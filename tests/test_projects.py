"""MLflow Projects through `steppe run` and steppe.projects.run: a real steppe server, real
child processes (logging through steppe's client and through the real mlflow client), real
git repositories and virtual environments."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import steppe
import steppe.projects
from steppe.projects import ExecutionException
from tests.conftest import ServerProcess, clean_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

MLPROJECT = """\
name: tiny
python_env: python_env.yaml
entry_points:
  main:
    parameters:
      alpha: {type: float, default: 0.5}
      data: path
      label: {type: string, default: "a b"}
    command: "python train.py --alpha {alpha} --data {data} --label {label}"
  with_mlflow:
    parameters:
      steps: {type: float, default: 3}
    command: "python with_mlflow.py {steps}"
  fails:
    command: "python -c 'import sys; sys.exit(3)'"
"""

TRAIN = """\
import argparse, steppe
p = argparse.ArgumentParser()
p.add_argument("--alpha", type=float); p.add_argument("--data"); p.add_argument("--label")
p.add_argument("--extra", default="none")
a = p.parse_args()
with steppe.start_run():
    steppe.log_metric("loss", 1.0 - a.alpha)
    steppe.set_tag("seen", f"{a.data}|{a.label}|{a.extra}")
"""

WITH_MLFLOW = """\
import sys, mlflow
with mlflow.start_run():
    for step in range(int(float(sys.argv[1]))):
        mlflow.log_metric("acc", step / 10, step=step)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "MLproject").write_text(MLPROJECT)
    (folder / "python_env.yaml").write_text(
        f"python: {'.'.join(map(str, sys.version_info[:2]))}\nbuild_dependencies: []\n"
        "dependencies: []\n"
    )
    (folder / "train.py").write_text(TRAIN)
    (folder / "with_mlflow.py").write_text(WITH_MLFLOW)
    (folder / "bare.py").write_text(
        "import sys, steppe\nwith steppe.start_run():\n"
        "    steppe.log_param('argv', ' '.join(sys.argv[1:]))\n"
    )
    (folder / "hello.sh").write_text('echo "from sh" > "$(dirname "$0")/sh-ran.txt"\n')
    return folder


def _experiment(prefix: str = "proj") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_project_run_logs_params_tags_and_the_childs_metrics(
    tracking: str, project: Path, tmp_path: Path
) -> None:
    submitted = steppe.projects.run(
        str(project),
        parameters={"data": "in.csv", "extra": "x"},
        experiment_name=_experiment(),
        run_name="project-run",
    )
    assert submitted.get_status() == "FINISHED"
    run = steppe.get_run(submitted.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "project-run"
    # Every declared parameter (defaults too, paths made absolute) and the undeclared one.
    assert run.data.params == {
        "alpha": "0.5",
        "data": str(Path.cwd() / "in.csv"),
        "label": "a b",
        "extra": "x",
    }
    assert run.data.metrics["loss"] == 0.5  # logged by the child, into the same run
    assert run.data.tags["seen"] == f"{Path.cwd() / 'in.csv'}|a b|x"
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "PROJECT"
    assert tags["mlflow.project.entryPoint"] == "main"
    assert tags["mlflow.project.backend"] == "local"
    assert tags["mlflow.source.name"] == str(project)
    assert "mlflow.source.git.commit" not in tags  # not a git repository


def test_the_real_mlflow_client_inside_a_project_logs_into_its_run(
    tracking: str, project: Path, steppe_server: ServerProcess
) -> None:
    submitted = steppe.projects.run(
        str(project), entry_point="with_mlflow", parameters={"steps": 4}
    )
    history = MlflowClient(steppe_server.http_url).get_metric_history(submitted.run_id, "acc")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert MlflowClient(steppe_server.http_url).get_run(submitted.run_id).info.status == "FINISHED"


def test_a_failing_command_fails_the_run_and_the_cli(
    project: Path, steppe_server: ServerProcess
) -> None:
    name = _experiment("fails")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "steppe",
            "run",
            str(project),
            "-e",
            "fails",
            "--experiment-name",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(STEPPE_TRACKING_URI=steppe_server.http_url),
    )
    assert done.returncode == 3, done.stderr
    client = MlflowClient(steppe_server.http_url)
    experiment = client.get_experiment_by_name(name)
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert "FAILED" in done.stderr


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({}, "missing parameters: 'data'"),
        ({"data": "x", "alpha": "fast"}, "'alpha' has type float"),
    ],
)
def test_bad_parameters_are_refused_before_any_run_exists(
    tracking: str, project: Path, parameters: dict[str, Any], message: str
) -> None:
    name = _experiment("refused")
    with pytest.raises(ExecutionException, match=message):
        steppe.projects.run(str(project), parameters=parameters, experiment_name=name)
    assert steppe.get_experiment_by_name(name) is None  # nothing was created


def test_the_cli_refuses_an_unknown_entry_point_and_conda(
    project: Path, steppe_server: ServerProcess
) -> None:
    env = clean_env(STEPPE_TRACKING_URI=steppe_server.http_url)
    for extra, message in (
        (["-e", "nope"], "Could not find entry point 'nope'"),
        (["-e", "bare.py", "--env-manager", "conda"], "conda is not supported"),
        (["-P", "no-equals"], "give NAME=VALUE"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "steppe", "run", str(project), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_bare_python_and_shell_entry_points(tracking: str, project: Path) -> None:
    submitted = steppe.projects.run(str(project), entry_point="bare.py", parameters={"k": "v w"})
    assert steppe.get_run(submitted.run_id).data.params["argv"] == "--k v w"
    steppe.projects.run(str(project), entry_point="hello.sh")
    assert (project / "sh-ran.txt").read_text() == "from sh\n"


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(folder), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_a_git_repository_by_uri_with_its_commit(tracking: str, project: Path) -> None:
    _git(project, "init", "-q")
    _git(project, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", ".")
    _git(project, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "p")
    commit = _git(project, "rev-parse", "HEAD")
    submitted = steppe.projects.run(f"file://{project}", parameters={"data": "d"})
    tags = steppe.get_run(submitted.run_id).data.tags
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["mlflow.source.name"] == f"file://{project}"
    # A local folder inside a repository is tagged with its commit too.
    local = steppe.projects.run(str(project), parameters={"data": "d"})
    assert steppe.get_run(local.run_id).data.tags["mlflow.source.git.commit"] == commit


def test_virtualenv_is_built_once_and_reused_until_python_env_changes(
    tracking: str,
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STEPPE_PROJECT_ENV_DIR", str(tmp_path / "envs"))
    out = tmp_path / "where.txt"
    (project / "where.sh").write_text('echo "$VIRTUAL_ENV|$(command -v python)" > "$1"\n')
    (project / "MLproject").write_text(
        MLPROJECT + f'  where:\n    command: "bash where.sh {out}"\n'
    )

    def run_where() -> str:
        steppe.projects.run(str(project), entry_point="where", env_manager="virtualenv")
        return out.read_text().strip()

    first = run_where()
    env, python = first.split("|")
    assert python == f"{env}/bin/python" and Path(env).parent == tmp_path / "envs"
    assert "creating the environment" in capfd.readouterr().err
    assert run_where() == first
    assert "reusing the environment" in capfd.readouterr().err
    # What the environment is made of changed (a requirements file, then its contents):
    # a new environment each time, never the stale one.
    spec = project / "python_env.yaml"
    spec.write_text(spec.read_text().replace("\ndependencies: []", "\ndependencies: [-r req.txt]"))
    (project / "req.txt").write_text("# nothing yet\n")
    second = run_where()
    assert second != first and "creating the environment" in capfd.readouterr().err
    (project / "req.txt").write_text("# still nothing, but different\n")
    assert run_where() not in (first, second)
