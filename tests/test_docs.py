"""The documentation: README.md stays short and keeps the block `.ci/run` executes; every
relative link in README.md and docs/ resolves; every `ablate` command they show exists with
the flags it is shown with; the SLURM script in docs/ really runs a shared grid exactly once,
and the Kubernetes Job runs the same command."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import click
import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from ablate.cli import main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
SBATCH = DOCS / "slurm" / "ablate-grid.sbatch"
K8S_JOB = DOCS / "k8s" / "ablate-grid-job.yaml"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
# The tiny grid of tests/test_cli_grid.py: 1 model x 2 toggle settings x 1 seed = 2 cells.
TINY = ["--models", "unet", "--model-arg", "base_channels=4", "--image-size", "32", "--epochs", "1",
        "--data", "synthetic", "--no-report", "--seeds", "1", "--toggles", "scheduler"]


# --------------------------------------------------------------------------- README and links
def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; guides and tables belong in docs/"


def test_readme_keeps_the_ci_test_block_that_ci_runs():
    """`.ci/run` runs the lines between the markers (fences dropped) as one command."""
    text = README.read_text()
    block = re.search(r"^<!-- ci:test -->\n```bash\n(.*?)\n```\n<!-- /ci:test -->$", text, re.S | re.M)
    assert block, "README.md lost its <!-- ci:test --> block"
    command = block.group(1)
    assert "\n" not in command
    assert 'pip install -e ".[test,smp,mysql]"' in command and command.endswith(".venv/bin/python -m pytest -q")
    assert "sed -n '/<!-- ci:test -->/,/<!-- \\/ci:test -->/p' README.md" in (REPO / ".ci" / "run").read_text()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ +(.+?) *$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # code is not a link
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no file {target})")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, broken


def test_docs_folder_has_the_guides_the_readme_promises():
    for name in ("storage.md", "statistics.md", "factors.md", "models-and-data.md", "measurements.md"):
        assert (DOCS / name).is_file(), name
        assert f"docs/{name}" in README.read_text(), f"README.md does not link docs/{name}"


# --------------------------------------------------------------------------- shown commands
def _shell_lines(page: Path) -> list[str]:
    """Every command of the page: the lines of its bash code blocks (continuation lines
    joined, comments dropped) and its inline code spans that start with `ablate `."""
    text, lines = page.read_text(), []
    for block in re.findall(r"^```(?:bash|sh|console)\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                lines.extend(part.strip() for part in re.split(r"&&|\|\||;|\|", line))
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    lines += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith("ablate ")]
    return lines


def _ablate_invocations(page: Path) -> list[list[str]]:
    """The arguments after `ablate` (`.venv/bin/ablate`, `python -m ablate`, `time ablate`)
    of every command the page shows."""
    found = []
    for line in _shell_lines(page):
        words = shlex.split(line.replace("<", "").replace(">", ""))  # <placeholders> are words
        for i, word in enumerate(words):
            if Path(word).name == "ablate" and i + 1 < len(words):
                found.append(words[i + 1:])
                break
    return found


def _resolve(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """(the subcommand path, its click command, the arguments after it)."""
    command, path = main, []
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"`ablate {' '.join([*path, args[0]])}`: no such command"
        command, path, args = sub, [*path, args[0]], args[1:]
    return path, command, args


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_ablate_command_shown_exists_with_the_flags_shown(page):
    invocations = _ablate_invocations(page)
    if page == README:  # the tour: one example per command
        shown = {" ".join(_resolve(args)[0]) for args in invocations}
        assert {"grid", "status", "tune", "report", "train", "predict", "evaluate", "data synth",
                "data info"} <= shown, shown
    for args in invocations:
        path, command, rest = _resolve(args)
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        unknown = [w.split("=")[0] for w in rest if w.startswith("--") and w.split("=")[0] not in known]
        assert not unknown, f"`ablate {' '.join(args)}`: {unknown} not options of `ablate {' '.join(path)}`"
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- SLURM and Kubernetes
def _sbatch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ABLATE_", "FAULT_"))}
    return {**env, **extra}


def _sbatch(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_slurm_array_tasks_share_one_storage_and_run_every_cell_once(tmp_path, cache_dir):
    """Two array tasks of docs/slurm/ablate-grid.sbatch at once (bash stands in for SLURM) on
    one journal storage and one artifact folder: both exit 0, each cell has one COMPLETE trial."""
    journal, artifacts = tmp_path / "optuna.journal", tmp_path / "artifacts"
    args = [*TINY, "--study-name", "slurm", "--results-dir", str(tmp_path / "results"), "--cache-dir", str(cache_dir)]
    tasks = [_sbatch(_sbatch_env(SLURM_ARRAY_TASK_ID=str(i), SLURM_CPUS_PER_TASK="1", ABLATE_STORAGE=str(journal),
                                 ABLATE_ARTIFACTS=str(artifacts), ABLATE_ARGS=shlex.join(args),
                                 ABLATE_CMD=f"{sys.executable} -m ablate"))
             for i in range(2)]
    outputs = [t.communicate(timeout=500) for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outputs
    for i, (_, err) in enumerate(outputs):
        assert f"ablate-grid: array task {i} on " in err and ", 1 worker(s)" in err, err

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="slurm", storage=storage).get_trials()
    complete = Counter(t.user_attrs["cell_id"] for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == 2 and set(complete.values()) == {1}, complete
    assert len({t.user_attrs["cell_id"] for t in trials}) == 2  # no trial of a cell outside the grid
    assert any(p.is_file() for p in artifacts.rglob("*"))  # the files went to the shared store


def _sbatch_argv(**env: str) -> list[str]:
    """The arguments the script hands to ablate, printed one per line instead of run."""
    proc = subprocess.run(["bash", str(SBATCH)], env=_sbatch_env(ABLATE_CMD="printf %s\\n", **env), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_the_slurm_script_takes_workers_from_the_task_and_needs_a_storage():
    argv = _sbatch_argv(SLURM_ARRAY_TASK_ID="3", SLURM_CPUS_PER_TASK="6", ABLATE_STORAGE="postgresql://u:p@db/ablate",
                        ABLATE_ARTIFACTS="/shared/a", ABLATE_ARGS="--study studies/seed-report.toml --seeds 3")
    assert argv == ["grid", "--storage", "postgresql://u:p@db/ablate", "--artifacts", "/shared/a", "--workers", "6",
                    "--study", "studies/seed-report.toml", "--seeds", "3"]
    assert _sbatch_argv(ABLATE_STORAGE="s", ABLATE_ARTIFACTS="a", ABLATE_WORKERS="auto")[-1] == "auto"
    missing = subprocess.run(["bash", str(SBATCH)], env=_sbatch_env(ABLATE_ARTIFACTS="/shared/a", ABLATE_CMD="true"),
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "set ABLATE_STORAGE" in missing.stderr


def test_the_kubernetes_job_runs_the_slurm_command_with_the_storage_from_a_secret():
    job = yaml.safe_load(K8S_JOB.read_text())
    assert job["kind"] == "Job" and job["spec"]["parallelism"] >= 2 and "completions" not in job["spec"]
    container, = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ABLATE_STORAGE"]["valueFrom"]["secretKeyRef"]["key"]
    assert env["ABLATE_WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    cpus = str(container["resources"]["limits"]["cpu"])
    values = {"ABLATE_STORAGE": "postgresql://u:p@db/ablate", "ABLATE_ARTIFACTS": env["ABLATE_ARTIFACTS"]["value"],
              "ABLATE_WORKERS": cpus}
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert values["ABLATE_ARTIFACTS"] in mounts  # the artifact folder is the shared volume
    # Kubernetes expands $(VAR) in command and args from the container's env.
    k8s = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], word) for word in container["command"] + container["args"]]
    slurm = _sbatch_argv(SLURM_CPUS_PER_TASK=cpus, ABLATE_STORAGE=values["ABLATE_STORAGE"],
                         ABLATE_ARTIFACTS=values["ABLATE_ARTIFACTS"])
    assert k8s[0] == "ablate" and k8s[1:] == slurm
