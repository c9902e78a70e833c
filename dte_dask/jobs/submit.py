"""``dte-dask submit``: run a job on a Slurm cluster as a batch job.

:func:`submit_job` writes two files into the job's output folder and hands the script to
``sbatch``::

    OUTPUT/
      <name>.job.yaml      the validated job, frozen (overrides applied, output made absolute):
                           what the batch job runs, whatever happens to JOB.yaml afterwards
      <name>.sbatch        the batch script: #SBATCH directives, optional setup lines, then
                           ``dte-dask run <name>.job.yaml --profile P --out OUTPUT --no-progress``
      slurm-<jobid>.out    the job's terminal output (dashboard URL, timings), once it runs

The batch job is the *driver*: it starts the job's cluster profile inside the allocation.
With ``--profile local`` the workers are a LocalCluster on the allocated node (size the
allocation with ``--cpus``/``--mem``); with a ``slurm``/``slurm-numa`` profile the driver, from
its compute node, submits the worker jobs through dask-jobqueue (``sbatch`` must work there, and
TLS files must be on a shared file system; see ``docs/cluster.md``).

Nothing here imports dask or starts a cluster; only ``sbatch``/``squeue``/``scontrol``/``sacct``
are run.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dte_dask.exceptions import DteDaskError, SpecError
from dte_dask.jobs.spec import JobSpec

__all__ = ["SlurmOptions", "Submission", "SubmitError", "batch_script", "write_batch_files", "submit_job",
           "job_state", "wait_for_job", "FINISHED_OK"]

FINISHED_OK = "COMPLETED"
_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
           "SIGNALING", "STAGE_OUT", "STOPPED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2})$")
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# runs `dte-dask run ...` with exactly this interpreter (no reliance on PATH in the job)
_ENTRY = "import sys; from dte_dask.cli import main; sys.exit(main(prog_name=\"dte-dask\"))"


class SubmitError(DteDaskError, RuntimeError):
    """``sbatch`` is missing or refused the job (the message carries its error output)."""


@dataclass(frozen=True)
class SlurmOptions:
    """Resources and extras of the batch job (``None``: the site's default).

    Attributes
    ----------
    partition : ``--partition``
    time : ``--time`` (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)
    cpus : ``--cpus-per-task``
    mem : ``--mem`` (``4G``, ``500M``, MB when no unit)
    account : ``--account``
    job_name : ``--job-name`` (default ``dte-<job name>``)
    directives : extra ``#SBATCH`` lines, written as ``--qos=high``, ``-N 1`` or
        ``#SBATCH --exclusive``
    setup : shell lines run before the job (``module load ...``, ``source venv/bin/activate``)
    python : interpreter that runs dte_dask in the job (default: this one, ``sys.executable``;
        the compute nodes must see it at the same path)
    """

    partition: str | None = None
    time: str | None = None
    cpus: int | None = None
    mem: str | None = None
    account: str | None = None
    job_name: str | None = None
    directives: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    python: str | None = None

    def __post_init__(self) -> None:
        if self.time is not None and not _TIME.match(self.time):
            raise SpecError(f"time: {self.time!r} is not a Slurm time limit (MM, HH:MM:SS, D-HH:MM:SS, ...)")
        if self.cpus is not None and (not isinstance(self.cpus, int) or self.cpus < 1):
            raise SpecError(f"cpus: must be a positive integer, got {self.cpus!r}")
        if self.mem is not None and not _MEM.match(str(self.mem)):
            raise SpecError(f"mem: {self.mem!r} is not a Slurm memory size (e.g. 4G, 500M, 2048)")
        for name in ("partition", "account", "job_name"):
            v = getattr(self, name)
            if v is not None and (not v or any(c.isspace() for c in v)):
                raise SpecError(f"{name}: {v!r} must be one word")
        for d in self.directives:
            _directive(d)  # validates
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise SpecError(f"setup: one shell line per entry, got {line!r}")

    def directive_lines(self) -> list[str]:
        """The ``#SBATCH`` lines these options ask for (after the job's own name/output ones)."""
        out = []
        for flag, v in (("--partition", self.partition), ("--time", self.time), ("--cpus-per-task", self.cpus),
                        ("--mem", self.mem), ("--account", self.account)):
            if v is not None:
                out.append(f"#SBATCH {flag}={v}")
        out += [f"#SBATCH {_directive(d)}" for d in self.directives]
        return out


def _directive(text: str) -> str:
    """``"--qos=x"`` / ``"#SBATCH --qos=x"`` -> ``"--qos=x"``; rejects anything that is not one option."""
    d = str(text).strip()
    if d.startswith("#SBATCH"):
        d = d[len("#SBATCH"):].strip()
    if not d.startswith("-") or "\n" in d or "\r" in d:
        raise SpecError(f"sbatch directive {text!r}: expected an sbatch option such as --qos=high or -N 1")
    return d


@dataclass(frozen=True)
class Submission:
    """What :func:`submit_job` did: the Slurm job id (``None`` on a dry run) and the files."""

    job_id: str | None
    script: Path
    job_file: Path
    output: Path
    script_text: str = field(repr=False, default="")

    @property
    def log(self) -> Path | None:
        """The job's ``slurm-<id>.out`` (exists once the job has started)."""
        return None if self.job_id is None else self.output / f"slurm-{self.job_id}.out"


def _directive_value(path: str | os.PathLike[str]) -> str:
    """A path as an ``#SBATCH`` value (sbatch reads double quotes there, not shell escapes)."""
    text = os.fspath(path)
    if '"' in text or "\n" in text:
        raise SpecError(f"path {text!r} cannot be written into an #SBATCH line")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _safe(name: str) -> str:
    return _SAFE.sub("_", name).strip("._") or "job"


def _paths(job: JobSpec) -> tuple[Path, Path, Path]:
    out = Path(os.path.expanduser(job.output)).absolute()
    stem = _safe(job.name)
    return out, out / f"{stem}.job.yaml", out / f"{stem}.sbatch"


def frozen_job(job: JobSpec, profile: str | None = None) -> JobSpec:
    """The job as the batch job will run it: output folder absolute, profile set."""
    upd = job.model_copy(deep=True)
    upd.output = os.fspath(_paths(job)[0])
    if profile is not None:
        upd.cluster.profile = profile
    return upd


def batch_script(job: JobSpec, *, profile: str | None = None, options: SlurmOptions | None = None,
                 job_file: str | os.PathLike[str] | None = None, workdir: str | os.PathLike[str] | None = None,
                 source: str | None = None) -> str:
    """The text of the batch script that runs ``job`` with ``dte-dask run``.

    Parameters
    ----------
    job : JobSpec
    profile : str, optional
        Cluster profile the job starts inside the allocation (default: the job's own).
    options : SlurmOptions, optional
    job_file : path, optional
        The job file the script runs (default ``OUTPUT/<name>.job.yaml``, see :func:`write_batch_files`).
    workdir : path, optional
        ``--chdir`` of the job, against which relative data paths resolve (default: the current
        directory).
    source : str, optional
        The job file the user gave (only written in a comment).
    """
    opts = options or SlurmOptions()
    out, default_job_file, _ = _paths(job)
    job_file = Path(job_file) if job_file is not None else default_job_file
    workdir = Path(workdir) if workdir is not None else Path.cwd()
    profile = profile or job.cluster.profile
    python = opts.python or sys.executable
    q = shlex.quote
    try:
        from importlib.metadata import version

        ver = version("dte_dask")
    except Exception:  # noqa: BLE001 - not installed as a distribution (source checkout)
        ver = "?"
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={_safe(opts.job_name or 'dte-' + job.name)}",
        f"#SBATCH --output={_directive_value(out / 'slurm-%j.out')}",
        f"#SBATCH --chdir={_directive_value(workdir)}",
        *opts.directive_lines(),
        f"# dte-dask job {job.name!r}: written by `dte-dask submit` (dte_dask {ver}, {now})",
    ]
    if source:
        lines.append(f"# from {source}; runs the frozen copy {job_file.name} next to this script")
    lines += [
        f"# cluster profile {profile!r} is started inside this allocation; results go to {out}",
        "set -euo pipefail",
        *opts.setup,
        'echo "dte-dask: job ${SLURM_JOB_ID:-?} on $(hostname) started $(date -Is)"',
        " ".join([q(python), "-c", q(_ENTRY), "run", q(os.fspath(job_file)), "--profile", q(profile),
                  "--out", q(os.fspath(out)), "--no-progress"]),
        'echo "dte-dask: job ${SLURM_JOB_ID:-?} finished $(date -Is)"',
    ]
    return "\n".join(lines) + "\n"


def write_batch_files(job: JobSpec, *, profile: str | None = None, options: SlurmOptions | None = None,
                      source: str | None = None, workdir: str | os.PathLike[str] | None = None
                      ) -> tuple[Path, Path, str]:
    """Write ``OUTPUT/<name>.job.yaml`` and ``OUTPUT/<name>.sbatch``; returns (script, job file, text)."""
    frozen = frozen_job(job, profile)
    out, job_path, script_path = _paths(frozen)
    text = batch_script(frozen, profile=profile, options=options, job_file=job_path, workdir=workdir,
                        source=source)
    out.mkdir(parents=True, exist_ok=True)
    dumped = frozen.model_dump(mode="json")
    job_path.write_text(f"# frozen by `dte-dask submit` from {source or 'a job spec'}\n"
                        + yaml.safe_dump(dumped, sort_keys=False))
    script_path.write_text(text)
    script_path.chmod(0o755)
    return script_path, job_path, text


def _run(cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)


def submit_job(job: JobSpec, *, profile: str | None = None, options: SlurmOptions | None = None,
               dry_run: bool = False, source: str | None = None, sbatch: str = "sbatch",
               workdir: str | os.PathLike[str] | None = None) -> Submission:
    """Write the batch files for ``job`` and ``sbatch`` them (or, ``dry_run``, only build the script).

    Returns
    -------
    Submission
        ``job_id`` is the Slurm job id (``None`` on a dry run, which writes nothing).

    Raises
    ------
    SubmitError
        ``sbatch`` is not on PATH or refused the job (its message is included).
    """
    if dry_run:
        frozen = frozen_job(job, profile)
        out, job_path, script_path = _paths(frozen)
        text = batch_script(frozen, profile=profile, options=options, job_file=job_path, workdir=workdir,
                            source=source)
        return Submission(None, script_path, job_path, out, text)
    exe = shutil.which(sbatch)
    if exe is None:
        raise SubmitError(f"{sbatch!r} is not on PATH: submit from a Slurm login node (or use --dry-run to "
                          "see the script)")
    script, job_path, text = write_batch_files(job, profile=profile, options=options, source=source,
                                               workdir=workdir)
    try:
        proc = _run([exe, "--parsable", os.fspath(script)])
    except subprocess.TimeoutExpired:
        raise SubmitError("sbatch did not answer within 60 s (is slurmctld up?)") from None
    if proc.returncode != 0:
        raise SubmitError(f"sbatch refused {script}: {(proc.stderr or proc.stdout).strip()}")
    job_id = proc.stdout.strip().splitlines()[-1].split(";")[0].strip() if proc.stdout.strip() else ""
    if not job_id.replace("_", "").isdigit():
        raise SubmitError(f"sbatch printed no job id: {proc.stdout.strip()!r} {proc.stderr.strip()!r}")
    return Submission(job_id, script, job_path, script.parent, text)


# ------------------------------------------------------------------------------ waiting
def job_state(job_id: str) -> str | None:
    """The Slurm state of a job (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ...).

    Asks ``squeue``, then ``scontrol`` (finished jobs are kept ``MinJobAge`` seconds), then
    ``sacct`` (where accounting is on). ``None`` when no tool knows the job any more.
    """
    job_id = str(job_id)
    if shutil.which("squeue"):
        try:
            p = _run(["squeue", "-h", "-j", job_id, "-o", "%T"], timeout=30)
            state = p.stdout.strip().split()
            if p.returncode == 0 and state:
                return state[0]
        except subprocess.TimeoutExpired:
            pass
    if shutil.which("scontrol"):
        try:
            p = _run(["scontrol", "show", "job", "-o", job_id], timeout=30)
            m = re.search(r"\bJobState=(\S+)", p.stdout)
            if p.returncode == 0 and m:
                return m.group(1)
        except subprocess.TimeoutExpired:
            pass
    if shutil.which("sacct"):
        try:
            p = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], timeout=30)
            state = p.stdout.strip().split()
            if p.returncode == 0 and state:
                return state[0]
        except subprocess.TimeoutExpired:
            pass
    return None


def wait_for_job(job_id: str, *, timeout: float = 3600, poll: float = 2.0) -> str:
    """Block until the job leaves the queue; returns its final state (``UNKNOWN`` if no tool knows).

    Raises
    ------
    TimeoutError
        Still queued or running after ``timeout`` seconds.
    """
    start = time.monotonic()
    seen_active = False
    while True:
        state = job_state(job_id)
        if state is not None and state.rstrip("+") in _ACTIVE:
            seen_active = True
        elif state is not None:
            return state.rstrip("+")
        elif seen_active or time.monotonic() - start > 10:
            return "UNKNOWN"  # gone from every tool: finished (accounting off, MinJobAge passed)
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"Slurm job {job_id} is still {state} after {timeout:g} s")
        time.sleep(poll)
