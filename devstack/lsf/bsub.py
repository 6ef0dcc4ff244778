"""bsub: submit a job. Messages, streams and exit codes as in docs/lsf-behaviour.md A.1."""

from __future__ import annotations

import getpass
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass

from devstack.lsf import runner
from devstack.lsf.cli import LSF_ERROR, Context, hang
from devstack.lsf.common import in_system, view_of
from devstack.lsf.knobs import Knobs
from devstack.lsf.model import observe, parse_plan, plan_for
from devstack.lsf.state import Job

VALUE_OPTIONS = {
    *("-J", "-n", "-P", "-q", "-W", "-o", "-e", "-oo", "-eo", "-cwd", "-env", "-R", "-M", "-G", "-g", "-app"),
    *("-u", "-w", "-m", "-b", "-t", "-We", "-C", "-D", "-E", "-Ep", "-L", "-sp", "-U", "-Lp", "-k", "-c"),
    *("-F", "-f", "-i", "-is", "-S", "-sla", "-T", "-v", "-p", "-Q", "-s", "-data", "-datagrp", "-ext"),
}
FLAG_OPTIONS = {"-K", "-H", "-I", "-Ip", "-Is", "-B", "-N", "-r", "-rn", "-x", "-hl"}
USAGE = (
    "Usage: bsub [-h] [-V] [-H] [-x] [-r] [-N] [-B] [-I | -K] [-q queue_name ...] [-m host_name ...]\n"
    "            [-n min_proc[,max_proc]] [-R res_req] [-J job_name] [-P project_name] [-W [hour:]minute]\n"
    "            [-o out_file] [-e err_file] [-oo out_file] [-eo err_file] [-cwd dir] [-env env_vars]\n"
    "            [-M mem_limit] [-G user_group] [-g job_group] [-app app_profile] [command [argument ...]]"
)
NOT_SUBMITTED = "Job not submitted."
ESUB_ABORT = "Request aborted by esub. Job not submitted."
# Never passed from the submission environment to the job (bsub -env documentation).
NOT_PROPAGATED = re.compile(r"^(HOME|LSB_.*|LS_.*|LSF_.*)$")


def copy_command(words: list[str]) -> str:
    """Join the command words as OpenLava's CopyCommand does: first word verbatim, later ones quoted if spaced."""
    parts = [words[0]]
    for word in words[1:]:
        if word == "" or any(char.isspace() for char in word):
            quote = "'" if ('"' in word or "$" in word) else '"'
            parts.append(f"{quote}{word}{quote}")
        else:
            parts.append(word)
    return " ".join(parts)


def parse(args: list[str]) -> tuple[dict[str, str], list[str], str | None]:
    """The options (last one wins; -R repeats are joined) and the command words of bsub's arguments; or an error."""
    options: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in VALUE_OPTIONS:
            if index + 1 >= len(args):
                return options, [], f"bsub: option requires an argument -- {arg[1:]}\n{USAGE}"
            value = args[index + 1]
            options[arg] = f"{options[arg]} {value}" if arg == "-R" and arg in options else value
            index += 2
        elif arg in FLAG_OPTIONS:
            options[arg] = ""
            index += 1
        elif arg.startswith("-") and len(arg) > 1:
            return options, [], f"bsub: illegal option -- {arg[1:]}\n{USAGE}"
        else:
            return options, args[index:], None
    return options, [], None


def script_options(script: str) -> tuple[dict[str, str], str | None]:
    """Options from the ``#BSUB`` lines of a job script read from stdin."""
    options: dict[str, str] = {}
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#BSUB"):
            continue
        try:
            words = shlex.split(stripped[len("#BSUB") :])
        except ValueError as exc:
            return options, f"Bad #BSUB line {stripped!r}: {exc}. {NOT_SUBMITTED}"
        found, rest, error = parse(words)
        if error:
            return options, error
        if rest:
            return options, f"Bad #BSUB line {stripped!r}: unexpected {' '.join(rest)!r}. {NOT_SUBMITTED}"
        options.update(found)
    return options, None


def _script_name(script: str) -> str:
    for line in script.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped
    return "bsub"


def runlimit_minutes(text: str) -> int | None:
    """``[hour:]minute[/host]`` -> minutes; None when malformed."""
    match = re.fullmatch(r"(?:(\d+):)?(\d+)(?:/\S+)?", text.strip())
    if not match:
        return None
    return int(match.group(1) or 0) * 60 + int(match.group(2))


def _resource_error(spec: str) -> str | None:
    """The few -R mistakes the emulator recognises, in LSF's words."""
    if spec.count("[") != spec.count("]"):
        return f"Bad resource requirement syntax. {NOT_SUBMITTED}"
    sections = re.findall(r"(\w+)\s*\[", spec)
    for name in sections:
        if sections.count(name) > 1 and name in {"select", "order", "span", "same"}:
            return f'Error near "{name}" : duplicate section. {NOT_SUBMITTED}'
    if re.search(r"rusage\s*\[\s*\]", spec):
        return f"Error in rusage section. {NOT_SUBMITTED}"
    if re.search(r"select\s*\[\s*[^\]]*[<>=]\s*\]", spec):
        return (
            f'Error in select section: Expected number, string, name, or "(" but found end of section. {NOT_SUBMITTED}'
        )
    return None


def _split_env(spec: str) -> list[str]:
    """Split a -env value at commas outside single quotes."""
    items, current, quoted = [], "", False
    for char in spec:
        if char == "'":
            quoted = not quoted
            continue
        if char == "," and not quoted:
            items.append(current.strip())
            current = ""
            continue
        current += char
    items.append(current.strip())
    return [item for item in items if item]


def job_environment(spec: str | None) -> dict[str, str]:
    """The job's environment for ``-env`` (default ``all``): ``none``, ``all, ~VAR, VAR=val`` or ``VAR[=val], ...``."""
    base = {key: value for key, value in os.environ.items() if not NOT_PROPAGATED.match(key)}
    minimal = {key: os.environ[key] for key in ("PATH", "USER", "LOGNAME", "SHELL") if key in os.environ}
    minimal["HOME"] = os.path.expanduser("~")
    items = _split_env(spec) if spec is not None else ["all"]
    if items and items[0].lower() == "none":
        return minimal
    if items and items[0].lower() == "all":
        env, items = {**base, "HOME": minimal["HOME"]}, items[1:]
    else:
        env = dict(minimal)
    for item in items:
        if item.startswith("~"):
            env.pop(item[1:], None)
        elif "=" in item:
            key, value = item.split("=", 1)
            env[key.strip()] = value
        elif item in os.environ:
            env[item] = os.environ[item]
    return env


def output_path(spec: str, job_id: int, cwd: str, suffix: str) -> str:
    """-o/-e path: ``%J``/``%I`` expanded, a folder (trailing ``/``) gives ``<dir>/<id>.<suffix>``, relative to cwd."""
    path = spec.replace("%J", str(job_id)).replace("%I", "0")
    if path.endswith("/") or os.path.isdir(os.path.join(cwd, path)):
        path = os.path.join(path, f"{job_id}.{suffix}")
    return os.path.normpath(os.path.join(cwd, path))


def _reject(ctx: Context, message: str) -> int:
    ctx.err(message)
    return LSF_ERROR


@dataclass
class _Submission:
    """A submission that passed every check: what the job record is made from."""

    options: dict[str, str]
    command: str
    name: str
    project: str | None  # as given with -P; the record says "default" when there is none
    queue: str
    queue_given: bool  # -q named the queue (else it is the default queue)
    slots: int
    runlimit: int | None
    mode: str
    plan: list[dict[str, object]] | None
    pend_seconds: float


def _job_command(args: list[str]) -> tuple[dict[str, str], str, str] | str:
    """The options, the command and the job's default name; with no command, the script on stdin. Or an error."""
    options, words, error = parse(args)
    if error:
        return error
    if words:
        command = copy_command(words)
        default_name = command
    else:
        # No command: the job script comes on stdin; command-line options override its #BSUB lines.
        command = sys.stdin.read()
        scripted, error = script_options(command)
        if error:
            return error
        options = {**scripted, **options}
        default_name = _script_name(command)
    if not command.strip():
        return f"Empty job. {NOT_SUBMITTED}"
    return options, command, default_name


def _site_esub(knobs: Knobs, args: list[str], project: str | None) -> tuple[str, bool] | str:
    """The site esub, which runs before mbatchd sees anything: (project policy, project bad), or its rejection."""
    reject_regex = knobs.get("FAKE_LSF_ESUB_REJECT_REGEX")
    if reject_regex and re.search(reject_regex, " ".join(["bsub", *args])):
        return f"{knobs.get('FAKE_LSF_ESUB_MESSAGE')}\n{ESUB_ABORT}"
    policy = knobs.get("FAKE_LSF_PROJECT_POLICY").strip().lower()
    allowed = knobs.words("FAKE_LSF_PROJECTS")
    project_bad = not project or (bool(allowed) and project not in allowed)
    if policy not in {"accept", "reject", "kill"}:
        return f"bsub (LSF emulator): FAKE_LSF_PROJECT_POLICY={policy!r}; use accept, reject or kill"
    if project_bad and policy == "reject":
        why = "No project given: submit with -P <project>." if not project else f"Project <{project}> is not valid."
        return f"{why}\n{ESUB_ABORT}"
    return policy, project_bad


def _queue(knobs: Knobs, options: dict[str, str]) -> tuple[str, bool] | str:
    """The job's queue and whether -q named it (else the default queue); or the error for an unknown queue."""
    queues = knobs.words("FAKE_LSF_QUEUES")
    requested = options.get("-q", "").split()
    for queue in requested:
        if queue not in queues:
            return f"{queue}: No such queue. {NOT_SUBMITTED}"
    return (requested[0] if requested else knobs.get("FAKE_LSF_DEFAULT_QUEUE")), bool(requested)


def _slots(knobs: Knobs, options: dict[str, str]) -> int | str:
    """The job's slots: 1, or -n ``min[,max]``'s max capped at FAKE_LSF_MAX_SLOTS; or the error for a bad -n."""
    if "-n" not in options:
        return 1
    match = re.fullmatch(r"(\d+)(?:,(\d+))?", options["-n"].strip())
    if not match or int(match.group(1)) < 1:
        return f"{options['-n']}: Bad argument for option -n. {NOT_SUBMITTED}"
    slots = int(match.group(2) or match.group(1))
    max_slots = knobs.integer("FAKE_LSF_MAX_SLOTS")
    if max_slots is not None and int(match.group(1)) > max_slots:
        return f"Too many processors requested. {NOT_SUBMITTED}"
    return min(slots, max_slots) if max_slots is not None else slots


def _runlimit(knobs: Knobs, options: dict[str, str]) -> int | str | None:
    """The -W run limit in minutes (None without -W); or the error for a malformed or too long limit."""
    if "-W" not in options:
        return None
    runlimit = runlimit_minutes(options["-W"])
    if runlimit is None:
        return f"{options['-W']}: Bad RUNLIMIT specification. {NOT_SUBMITTED}"
    hard = knobs.integer("FAKE_LSF_RUNLIMIT_MAX")
    if hard is not None and runlimit > hard:
        return f"RUNLIMIT: Cannot exceed queue's hard limit(s). {NOT_SUBMITTED}"
    return runlimit


_UNITS_MB = {"KB": 1 / 1024, "MB": 1.0, "GB": 1024.0, "TB": 1024.0**2}


def _megabytes(value: str) -> float | None:
    """A -M or rusage[mem=] value in MB: a unit suffix (KB, MB, GB, TB), else LSF_UNIT_FOR_LIMITS' default KB."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]B?)?\s*", value, re.IGNORECASE)
    if not match:
        return None
    unit = (match.group(2) or "KB").upper()
    return float(match.group(1)) * _UNITS_MB[unit if unit.endswith("B") else unit + "B"]


def _over_memory(knobs: Knobs, options: dict[str, str]) -> bool:
    """True when FAKE_LSF_MEMORY_NEED_MB exceeds the job's -M (or FAKE_LSF_DEFAULT_MEMLIMIT_MB without -M)."""
    need = knobs.number("FAKE_LSF_MEMORY_NEED_MB")
    if not need:
        return False
    limit = _megabytes(options["-M"]) if "-M" in options else knobs.number("FAKE_LSF_DEFAULT_MEMLIMIT_MB") or None
    return limit is not None and limit < need


def _mode_and_plan(
    knobs: Knobs, options: dict[str, str], name: str, policy: str, project_bad: bool
) -> tuple[str, list[dict[str, object]] | None, float]:
    """How the job runs (held, scripted or real), its plan if scripted, and FAKE_LSF_PEND_SECONDS."""
    plan = plan_for(name, knobs)
    mode = "held" if "-H" in options else ("scripted" if plan else "real")
    pend_seconds = knobs.number("FAKE_LSF_PEND_SECONDS")
    if mode != "held" and _over_memory(knobs, options):
        # The job needs more than its limit: LSF's memory enforcement kills it soon after it starts.
        plan = parse_plan(f"PEND:{pend_seconds},RUN:1,EXIT:137:TERM_MEMLIMIT", "FAKE_LSF_MEMORY_NEED_MB")
        mode = "scripted"
    if project_bad and policy == "kill" and mode != "held":
        # Accepted, then killed by the site soon after dispatch (Minerva's missing -P behaviour).
        admin_after = knobs.number("FAKE_LSF_ADMIN_KILL_AFTER")
        plan = parse_plan(f"PEND:{pend_seconds},RUN:{admin_after},EXIT:130:TERM_ADMIN", "FAKE_LSF_PROJECT_POLICY")
        mode = "scripted"
    return mode, plan, pend_seconds


def _check(ctx: Context, args: list[str]) -> _Submission | str:
    """Every check bsub and mbatchd make, in LSF's order; the submission, or LSF's message for the first failure."""
    command_found = _job_command(args)
    if isinstance(command_found, str):
        return command_found
    options, command, default_name = command_found
    knobs = ctx.knobs
    esub = _site_esub(knobs, args, options.get("-P"))
    if isinstance(esub, str):
        return esub
    policy, project_bad = esub
    queued = _queue(knobs, options)
    if isinstance(queued, str):
        return queued
    queue, queue_given = queued
    slots = _slots(knobs, options)
    if isinstance(slots, str):
        return slots
    runlimit = _runlimit(knobs, options)
    if isinstance(runlimit, str):
        return runlimit
    problem = _resource_error(options["-R"]) if "-R" in options else None
    if problem:
        return problem
    name = options.get("-J", default_name)
    mode, plan, pend_seconds = _mode_and_plan(knobs, options, name, policy, project_bad)
    return _Submission(
        options=options,
        command=command,
        name=name,
        project=options.get("-P"),
        queue=queue,
        queue_given=queue_given,
        slots=slots,
        runlimit=runlimit,
        mode=mode,
        plan=plan,
        pend_seconds=pend_seconds,
    )


def _store(ctx: Context, submission: _Submission) -> Job:
    """Allocate the job's id and save its record, under the state lock; the record."""
    options = submission.options
    knobs = ctx.knobs
    submit_cwd = os.getcwd()
    state = ctx.state
    with state.locked():
        now = time.time()

        def still_known(job_id: int) -> bool:
            # observe(), not view_of(): the lock is held, and view_of may take it to claim a report.
            old = state.load(job_id)
            return old is not None and in_system(ctx, old, observe(old, now, 0.0))

        job_id = state.allocate_id(still_known)
        cwd_spec = options.get("-cwd")
        cwd = (
            os.path.normpath(os.path.join(submit_cwd, cwd_spec.replace("%J", str(job_id)))) if cwd_spec else submit_cwd
        )
        out_spec = options.get("-oo", options.get("-o"))
        err_spec = options.get("-eo", options.get("-e"))
        job = Job(
            id=job_id,
            name=submission.name,
            user=getpass.getuser(),
            queue=submission.queue,
            project=submission.project or "default",
            command=submission.command,
            cwd=cwd,
            submit_time=now,
            submit_host=knobs.get("FAKE_LSF_SUBMIT_HOST"),
            exec_host=knobs.get("FAKE_LSF_EXEC_HOST"),
            slots=submission.slots,
            runlimit_minutes=submission.runlimit,
            mem_limit=options.get("-M", ""),
            resources=[options["-R"]] if "-R" in options else [],
            out_path=output_path(out_spec, job_id, cwd, "out") if out_spec else None,
            err_path=output_path(err_spec, job_id, cwd, "err") if err_spec else None,
            out_overwrite="-oo" in options,
            err_overwrite="-eo" in options,
            mode=submission.mode,
            plan=submission.plan,
            pend_seconds=submission.pend_seconds,
        )
        # A reused id replaces the old record; its spool and report files belong to the old job.
        (state.spool_dir / f"{job_id}.out").unlink(missing_ok=True)
        state.save(job)
    return job


def _announce(ctx: Context, submission: _Submission, job_id: int) -> None:
    """Print any esub chatter and ``Job <N> is submitted to ...``: on stdout, or on stderr with BSUB_STDERR set."""
    stream = ctx.err if os.environ.get("BSUB_STDERR") else ctx.out
    chatter = ctx.knobs.get("FAKE_LSF_ESUB_CHATTER").strip()
    if chatter:
        stream(f"Job is submitted to <{submission.project or 'default'}> project." if chatter == "1" else chatter)
    if submission.queue_given:
        stream(f"Job <{job_id}> is submitted to queue <{submission.queue}>.")
    else:
        stream(f"Job <{job_id}> is submitted to default queue <{submission.queue}>.")


def run(ctx: Context, args: list[str]) -> int:
    """Validate, store and start a job; print that it is submitted (``Job <N> is submitted to ... queue <q>.``)."""
    if args and args[0] in {"-h", "-V"}:
        ctx.err(USAGE if args[0] == "-h" else "IBM Spectrum LSF 10.1.0.0 (LSF emulator), Nov 25 2026")
        return 0 if args[0] == "-V" else LSF_ERROR
    submission = _check(ctx, args)
    if isinstance(submission, str):
        return _reject(ctx, submission)
    job = _store(ctx, submission)
    state = ctx.state
    if job.mode == "real":
        pid = runner.spawn(state, job, job_environment(submission.options.get("-env")))
        state.update(job.id, lambda record: setattr(record, "runner_pid", record.runner_pid or pid))

    if state.consume("FAKE_LSF_SUBMIT_THEN_HANG"):
        # mbatchd took the job but the answer never comes back: the client can only time out (ambiguous submission).
        return hang(ctx)
    if not state.consume("FAKE_LSF_EMPTY_STDOUT_ONCE"):
        _announce(ctx, submission, job.id)
    ctx.stdout.flush()
    if "-K" in submission.options:
        return _wait_for(ctx, job.id, job.submit_time)
    return 0


def _wait_for(ctx: Context, job_id: int, submitted: float) -> int:
    """The -K wait: block until the job ends; its exit code, or 126 if it was killed while pending."""
    ctx.err("<<Waiting for dispatch ...>>")
    announced = False
    while True:
        ctx.now = time.time()
        job = ctx.state.load(job_id)
        if job is None or job.submit_time != submitted:
            return LSF_ERROR
        view = view_of(ctx, job)
        if view.start_time is not None and not announced:
            announced = True
            if os.environ.get("LSB_SUBK_SHOW_EXEC_HOST"):
                ctx.err(f"<<Starting on {job.exec_host}>>")
        if view.finished:
            ctx.err("<<Job is finished>>")
            if view.stat in {"DONE", "PDONE"}:
                return 0
            if view.killed_while_pending:
                return 126
            return view.exit_code if view.exit_code is not None else 1
        time.sleep(0.1)
