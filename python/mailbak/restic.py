"""The restic client mailbak's off-site verbs drive (docs/OFFSITE.md): where the restic
repository is and how its secrets reach restic, running restic and reading its JSON output,
saying in one line why it failed, and stopping it.

- **Configuration** is restic's own: ``RESTIC_REPOSITORY`` (or ``RESTIC_REPOSITORY_FILE``),
  ``RESTIC_PASSWORD_FILE``/``RESTIC_PASSWORD_COMMAND``/``RESTIC_PASSWORD``, ``AWS_*`` for S3,
  or the options ``--restic-repo`` and ``--password-file`` (:class:`ResticConfig`), which are
  passed to restic through its environment: a secret is never on a command line (where ``ps``
  shows it) nor in mailbak's output (:func:`redact` strips credentials from any text of
  restic's that mailbak repeats). mailbak stores nothing of it.
- **Running**: :class:`Restic` runs a command to its end (:meth:`Restic.run`,
  :meth:`Restic.run_json`) or reads its JSON messages as they come (:meth:`Restic.start`); an
  interrupted restic is stopped with SIGINT, so that it removes its lock (:func:`stop`).

What mailbak pushes, with which tags, and what it does with the answers is ``offsite.py``'s:
this module knows nothing of mailbak's repositories or snapshots.

restic 0.14 (Debian 12) is the oldest restic this module is written for: it uses only flags
that version has.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mailbak.errors import ResticError, UsageError

#: What to do when restic is missing (the command then exits 2).
INSTALL_HINT = "install it with `apt-get install restic` (Debian, Ubuntu) or see https://restic.readthedocs.io/en/stable/020_installation.html"

#: Seconds restic gets to stop (and release its lock) after SIGINT before it is killed.
STOP_SECONDS = 30

#: Lines of restic's stderr kept for the one error line.
STDERR_LINES = 200

#: restic errors on single files kept per command (further ones are only counted by restic).
MAX_ERRORS = 100_000

#: The most of RESTIC_REPOSITORY_FILE read (to take its repository out of repeated text).
REPOSITORY_FILE_BYTES = 65_536

#: restic's exit status when a snapshot was made but some files could not be read.
RESTIC_INCOMPLETE = 3

#: Environment variables that configure the restic repository and its password.
REPO_VARS = ("RESTIC_REPOSITORY", "RESTIC_REPOSITORY_FILE")
PASSWORD_VARS = ("RESTIC_PASSWORD", "RESTIC_PASSWORD_FILE", "RESTIC_PASSWORD_COMMAND")


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
#: A configured repository URL with credentials: an optional backend prefix (``rest:``), the
#: URL's scheme, its user information (up to the last ``@``: a password may hold anything) and
#: the rest.
_URL_WITH_CREDENTIALS = re.compile(r"^(?P<backend>[a-z0-9]+:)?(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>.*)@(?P<rest>[^@]*)$", re.DOTALL)


def hidden_forms(repo: str) -> list[tuple[str, str]]:
    """(text, replacement) pairs that take the credentials of the configured repository ``repo``
    out of a text, longest first. The URL pattern of :func:`redact` stops at a space or a ``/``,
    which a password may hold unencoded; restic then fails to parse the URL and its message
    quotes the whole of it (without the backend prefix), and with a ``/``, the part of the
    password before it as a port."""
    m = _URL_WITH_CREDENTIALS.match(repo.strip())
    if m is None:
        return []
    backend, scheme, userinfo, rest = (m.group(k) or "" for k in ("backend", "scheme", "userinfo", "rest"))
    pairs = [(repo.strip(), f"{backend}{scheme}***@{rest}"), (f"{scheme}{userinfo}@{rest}", f"{scheme}***@{rest}")]
    _, _, password = userinfo.partition(":")
    if password:
        pairs += [(userinfo, "***"), (password, "***")]
        head = password.split("/", 1)[0]
        if head and head != password:
            pairs.append((f":{head}", ":***"))
    return sorted({p for p in pairs if p[0]}, key=lambda p: -len(p[0]))


def redact(text: str, repos: tuple[str, ...] = ()) -> str:
    """``text`` without the user and password of any URL in it (``rest:https://u:p@host/``
    becomes ``rest:https://***@host/``), nor those of the configured repositories ``repos``
    (:func:`hidden_forms`): restic repeats the repository in some messages."""
    for repo in repos:
        for secret, safe in hidden_forms(repo):
            text = text.replace(secret, safe)
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


def find_restic() -> str:
    """The restic executable on PATH; raises UsageError (exit 2) with the install hint."""
    path = shutil.which("restic")
    if path is None:
        raise UsageError(f"restic not found on PATH: mailbak's off-site copies are made by restic; {INSTALL_HINT}")
    return path


def _absolute_repo(repo: str) -> str:
    """A local restic repository given relative, made absolute: restic runs from inside the
    snapshot directory, where a relative path would mean something else."""
    if repo.startswith("local:"):
        return "local:" + os.path.abspath(repo[len("local:") :])
    if re.match(r"^[a-z0-9]+:", repo) and not repo.startswith(("/", ".")):
        return repo  # a backend (sftp:, s3:, rest:, ...): not a path here
    return os.path.abspath(repo)


@dataclass(frozen=True)
class ResticConfig:
    """Where the restic repository is and how to open it. Unset fields come from restic's own
    environment variables; ``options`` are restic's ``-o key=value`` (``sftp.command=...``,
    ``s3.storage-class=...``), which restic has no variables for."""

    repo: str | None = None
    password_file: Path | None = None
    options: tuple[str, ...] = ()

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """restic's environment: ``base`` (default: this process's) with the options given
        here in force. Raises UsageError when no repository or no password is configured."""
        env = dict(os.environ if base is None else base)
        if self.repo is not None:
            for v in REPO_VARS:
                env.pop(v, None)
            env["RESTIC_REPOSITORY"] = self.repo
        if self.password_file is not None:
            for v in PASSWORD_VARS:
                env.pop(v, None)
            env["RESTIC_PASSWORD_FILE"] = str(self.password_file)
        if not any(env.get(v) for v in REPO_VARS):
            raise UsageError("no restic repository: give --restic-repo or set RESTIC_REPOSITORY (e.g. s3:https://host/bucket/path, sftp:user@host:/path, /local/path)")
        if not any(env.get(v) for v in PASSWORD_VARS):
            raise UsageError("no password for the restic repository: give --password-file or set RESTIC_PASSWORD_FILE or RESTIC_PASSWORD_COMMAND")
        if env.get("RESTIC_REPOSITORY"):
            env["RESTIC_REPOSITORY"] = _absolute_repo(env["RESTIC_REPOSITORY"])
        for v in ("RESTIC_REPOSITORY_FILE", "RESTIC_PASSWORD_FILE"):
            if env.get(v):
                env[v] = os.path.abspath(env[v])
                if not os.path.isfile(env[v]) or not os.access(env[v], os.R_OK):
                    raise UsageError(f"{env[v]}: the {'password' if 'PASSWORD' in v else 'repository'} file ({v}) is not a readable file")
        for o in self.options:
            if "=" not in o:
                raise UsageError(f"restic option {o!r}: expected key=value (e.g. sftp.command=...)")
        return env


def parse_time(text: str) -> datetime | None:
    """restic's times (RFC 3339 with nanoseconds and an offset, also those of mailbak's push
    tags); None when ``text`` is not one."""
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$", text)
    if not m:
        return None
    try:
        return datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(2) == "Z" else m.group(2)))
    except ValueError:
        return None


def configured_repos(env: dict[str, str]) -> tuple[str, ...]:
    """The repository strings restic's environment ``env`` configures: ``RESTIC_REPOSITORY``
    and the content of ``RESTIC_REPOSITORY_FILE`` (as restic reads it: trimmed), for
    :func:`redact`. The file is the operator's, so a symlink there is followed as restic follows
    it (else its credentials would silently go unredacted); it is still read without waiting,
    only if regular, bounded. An unreadable file gives nothing (restic then says why)."""
    from mailbak.fsio import read_small

    repos = [env["RESTIC_REPOSITORY"]] if env.get("RESTIC_REPOSITORY") else []
    if env.get("RESTIC_REPOSITORY_FILE"):
        try:
            raw = read_small(env["RESTIC_REPOSITORY_FILE"], REPOSITORY_FILE_BYTES, follow=True)
        except OSError:
            raw = b""
        if raw.strip():
            repos.append(raw.decode("utf-8", "replace").strip())
    return tuple(repos)


# Running restic --------------------------------------------------------------------------------


class Restic:
    """Runs restic with a configuration's environment; never with a secret in its arguments."""

    def __init__(self, config: ResticConfig):
        self.binary = find_restic()
        self.env = config.environment()
        self.options = [a for o in config.options for a in ("-o", o)]
        #: The configured repository strings, taken out of every text of restic's repeated.
        self.repos = configured_repos(self.env)

    def command(self, *args: str) -> list[str]:
        """The command line of ``restic ARGS``, with the configuration's ``-o`` options."""
        return [self.binary, *self.options, *args]

    def run_json(self, *args: str, what: str) -> Any:
        """Runs ``restic --json ARGS`` to its end; returns its JSON output (the first line that
        is a JSON document). Raises ResticError naming ``what`` failed."""
        p = self.run(self.command("--json", *args))
        if p.returncode != 0:
            raise ResticError(f"restic {what} failed: {error_line(p.stderr, p.returncode, self.repos)}")
        for line in p.stdout.splitlines():
            if line.startswith(("[", "{")):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
        raise ResticError(f"restic {what}: no JSON in its output")

    def run(self, argv: list[str], cwd: Path | None = None, pass_fds: tuple[int, ...] = (), stdout: int | None = None) -> subprocess.CompletedProcess:
        """Runs ``argv`` (from :meth:`command`) to its end with restic's environment, its
        output captured; restic is stopped (:func:`stop`) when this is interrupted. With
        ``stdout`` (a descriptor), restic's output goes there as bytes, never through memory
        (``restic cat blob``, ``restic dump``), and only its stderr is captured."""
        out_to = subprocess.PIPE if stdout is None else stdout
        proc = subprocess.Popen(argv, cwd=cwd, env=self.env, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=out_to, stderr=subprocess.PIPE, text=True, errors="replace")
        try:
            out, err = proc.communicate()
        except BaseException:
            stop(proc)
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def start(self, *args: str, cwd: Path) -> ResticRun:
        """Starts ``restic --json ARGS`` in ``cwd``, to be read as it runs (:class:`ResticRun`)."""
        return ResticRun(self.command("--json", *args), cwd, self.env)


class ResticRun:
    """A running ``restic --json`` command, used as a context manager: its stdout's JSON
    messages are read as they come (:meth:`messages`), while a thread keeps the end of its
    stderr (:attr:`stderr`) and the JSON error objects restic 0.14 prints there (a file it
    cannot read: :attr:`errors`; the caller reports them once restic is done, as its reporter
    belongs to its own thread). Leaving the block by an exception stops restic."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        #: The last lines of restic's stderr that are not JSON.
        self.stderr: deque[str] = deque(maxlen=STDERR_LINES)
        #: restic's JSON error objects from stderr (up to MAX_ERRORS); the caller adds those of stdout.
        self.errors: list[dict[str, Any]] = []
        #: After a stop (the block left by an exception): the JSON messages restic printed that
        #: were not read, such as the summary of a backup that finished before the stop came.
        self.unread: list[dict[str, Any]] = []
        self._drain = threading.Thread(target=self._drain_stderr, name="restic-stderr", daemon=True)
        self._drain.start()

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr or ():
            doc = next(json_lines([line]), None)
            if doc is not None and doc.get("message_type") == "error" and len(self.errors) < MAX_ERRORS:
                self.errors.append(doc)
            elif doc is None:
                self.stderr.append(line)

    def messages(self) -> Iterator[dict[str, Any]]:
        """restic's JSON messages on stdout, in order, until it closes it."""
        return json_lines(self.proc.stdout)

    def wait(self) -> int:
        """Waits for restic to end; its exit status."""
        return self.proc.wait()

    def __enter__(self) -> ResticRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is not None:
                stop(self.proc)
                self.unread = self._rest()
        finally:
            self._drain.join(5)

    def _rest(self) -> list[dict[str, Any]]:
        """Once restic has ended: its stdout's messages not read yet (what a stopped reader left
        in the pipe). Read by a thread given a few seconds: a child restic started could still
        hold the pipe open."""
        rest: list[dict[str, Any]] = []

        def read() -> None:
            with contextlib.suppress(OSError, ValueError):
                rest.extend(json_lines(self.proc.stdout))

        reader = threading.Thread(target=read, name="restic-stdout", daemon=True)
        reader.start()
        reader.join(5)
        return list(rest)


def error_line(stderr: str, status: int, repos: tuple[str, ...] = ()) -> str:
    """The one line that says why restic failed: its last ``Fatal:`` line, else its last line,
    credentials removed (those of the configured repositories ``repos`` too: :func:`redact`)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith("Fatal:")]
    text = (fatal or lines or [f"exit status {status}"])[-1]
    text = text.removeprefix("Fatal:").strip()
    # restore goes on after a file fails and ends with "There were N errors": the first of
    # them says why (no space left on device, ...).
    locked = [ln for ln in lines if ln.startswith("unable to create lock")]
    if locked and not fatal:
        text = f"{locked[0]}; `restic unlock` removes locks whose process is gone"
    if text.startswith("unable to open config file"):
        text += "; is there a restic repository? create it once with `restic init`"
    ignored = [ln for ln in lines if ln.startswith("ignoring error for ")]
    if ignored and re.match(r"^There were \d+ errors$", text):
        text = f"{text.lower().removeprefix('there were ')}, the first: {ignored[0].removeprefix('ignoring error for ')}"
    return redact(f"{text} (restic exit status {status})", repos)


def stop(proc: subprocess.Popen) -> None:
    """Stops restic the way it likes (SIGINT: it removes its lock), killing it if it will not."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def cause(err: Any) -> str:
    """The text of an error restic printed as JSON: a message, or a Go path error
    (``{"Op": "open", "Path": ..., "Err": 13}``), or anything else as JSON."""
    if isinstance(err, dict):
        if isinstance(err.get("message"), str):
            return err["message"]
        if "Op" in err and isinstance(err.get("Err"), int):
            return f"{err['Op']} {err.get('Path', '')}: {os.strerror(err['Err'])}"
        return json.dumps(err)
    return str(err)


def json_lines(stream: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of restic's --json output, skipping anything else it prints."""
    for line in stream:
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            yield doc
