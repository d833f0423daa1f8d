"""Running a command: logging, provenance, ``--device``, and the one mapping from errors to exit codes.

Exit codes of every command:
    0   everything was processed;
    1   the run went through but some items failed (:class:`ItemFailures`, raised after the outputs are written:
        images, pairs, sequences...); the summary lists them;
    2   nothing could start or the run was stopped: a bad flag, config, data set, weight file
        (any other :class:`LiftKitError`; argparse's own usage errors also exit 2);
    130 interrupted (Ctrl-C).

Every run logs the liftkit version, the git commit (when the package is a git checkout) and the resolved arguments;
:func:`provenance` gives the same record for JSON outputs and feature-file metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

from liftkit import __version__
from liftkit.device import resolve_device
from liftkit.errors import LiftKitError, failure_report
from liftkit.io.outputs import check_output_dir, check_output_file, os_error_message, write_text_atomic

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
LOGGER = "liftkit"


class ItemFailures(LiftKitError):
    """Some items failed but the run finished (exit 1). ``items`` are one-line messages, listed in the summary."""

    def __init__(self, header: str, items: Iterable[str]):
        self.header, self.items = header, list(items)
        super().__init__(f"{header}: {len(self.items)} item(s)")


class _Formatter(logging.Formatter):
    """``[command] message`` for information, ``error: message`` for errors (the one-line error contract)."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"[{self.command}] warning: {msg}"
        return f"[{self.command}] {msg}"


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (so redirections and test capture see the messages)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(command: str, level: str = "info") -> logging.Logger:
    """Configure the ``liftkit`` logger once per run (replacing a previous run's handler) and return it."""
    logger = logging.getLogger(LOGGER)
    for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(command))
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False
    return logger


@lru_cache(maxsize=1)
def git_state() -> Dict[str, Any]:
    """``{"git_commit": sha, "git_dirty": bool}`` when the imported package is a git checkout's ``liftkit/``, else
    ``{"git_commit": None}`` (an installed package has no commit)."""
    pkg = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        lines = top.stdout.split()
        if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() / "liftkit" != pkg:
            return {"git_commit": None}
        dirty = subprocess.run(["git", "-C", lines[0], "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"git_commit": lines[1], "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}


def resolved_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The parsed arguments as JSON-ready values (paths as strings, private ``_*`` entries left out)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if k.startswith("_"):
            continue
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, (list, tuple)):
            v = [str(x) if isinstance(x, Path) else x for x in v]
        out[k] = v
    return out


def provenance(command: str, args: argparse.Namespace) -> Dict[str, Any]:
    """What produced an output: command, liftkit version, git commit (or None) and the resolved arguments."""
    return {"command": command, "liftkit_version": __version__, **git_state(), "args": resolved_args(args)}


def provenance_strings(run: Dict[str, Any]) -> Dict[str, str]:
    """:func:`provenance` as flat strings for feature-file metadata (``run_args`` is a JSON string)."""
    return {"command": run["command"], "liftkit_version": run["liftkit_version"],
            "git_commit": run.get("git_commit") or "", "git_dirty": str(run.get("git_dirty", "")).lower(),
            "run_args": json.dumps(run["args"], sort_keys=True)}


@dataclass
class Run:
    """What a command's body receives besides its arguments."""

    command: str
    log: logging.Logger
    info: Dict[str, Any] = field(default_factory=dict)  # provenance(); write it into every JSON output as "run"


OUTPUT_FILE_FLAGS = ("output_path", "output_json", "plot")
OUTPUT_DIR_FLAGS = ("output_dir",)


def check_output_flags(args: argparse.Namespace) -> None:
    """Refuse, before anything is loaded, output flags that cannot be written: ``--output_dir`` that is a file,
    ``--output_path`` / ``--output_json`` / ``--plot`` that is a folder, a path under a regular file, a name too
    long, a folder that is not writable (OutputError, exit 2)."""
    for name in OUTPUT_DIR_FLAGS:
        value = getattr(args, name, None)
        if value:
            check_output_dir(value, "--" + name)
    for name in OUTPUT_FILE_FLAGS:
        value = getattr(args, name, None)
        if value and isinstance(value, (str, Path)):
            check_output_file(value, "--" + name)


Body = Callable[[argparse.Namespace, Run], Optional[int]]


def run_command(command: str, parser: argparse.ArgumentParser, argv, body: Body) -> int:
    """Parse ``argv``, set up logging, resolve ``--device``, log the provenance, run ``body`` and map its errors to
    the exit codes above. ``body`` returns None/0 or raises."""
    args = parser.parse_args(argv)
    from liftkit.cli.options import given_dests

    args._given = given_dests(parser, argv)  # the explicit flags (``--protocol official`` never overrides them)
    log = configure_logging(command, getattr(args, "log_level", "info"))
    try:
        check_output_flags(args)
        if getattr(args, "device", None) is not None:
            args.device = str(resolve_device(args.device))
        run = Run(command, log, provenance(command, args))
        log.info("liftkit %s, git commit %s%s", __version__, run.info.get("git_commit") or "none (not a checkout)",
                 " (uncommitted changes)" if run.info.get("git_dirty") else "")
        log.info("args: %s", json.dumps(run.info["args"], sort_keys=True))
        return body(args, run) or EXIT_OK
    except ItemFailures as exc:
        sys.stderr.write(failure_report(exc.header, exc.items) + "\n")
        return EXIT_FAILED_ITEMS
    except LiftKitError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except OSError as exc:  # a write the command did not wrap itself (a plot, a JSON file...): still one line
        log.error("%s", os_error_message(exc.filename or "output", exc, "cannot read or write"))
        return EXIT_CONFIG
    except MemoryError:
        log.error("out of memory; lower the input size (--load_size, --lift_iter) or --max_memory_gb")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED


def run_sweep(args: argparse.Namespace, run: Run, body: Callable[[argparse.Namespace, Run], Any],
              metrics: Callable[[Any], Dict[str, Optional[float]]], metric_name: str) -> None:
    """Run an evaluation ``body`` once, or once per ``--sweep_sizes`` entry (outputs suffixed ``_<size>`` /
    ``size<size>/``), then print the sweep table: one row per input size, one column per method (``metrics`` maps
    a body's return value to method -> figure, a fraction). A sweep's JSON goes to ``--output_json`` itself."""
    sizes = getattr(args, "sweep_sizes", None)
    if not sizes:
        body(args, run)
        return
    rows: Dict[int, Dict[str, Optional[float]]] = {}
    failures: List[str] = []
    for size in sizes:
        one = argparse.Namespace(**vars(args))
        one.load_size, one.sweep_sizes = size, None
        if getattr(one, "output_json", None):
            p = Path(one.output_json)
            one.output_json = str(p.with_name(f"{p.stem}_{size}{p.suffix}"))
        if getattr(one, "output_dir", None):
            one.output_dir = str(Path(one.output_dir) / f"size{size}")
        run.log.info(f"sweep: input size {size}")
        try:
            rows[size] = metrics(body(one, run))
        except ItemFailures as exc:
            failures += [f"size {size}: {item}" for item in exc.items]
            rows[size] = {}
    methods = list(dict.fromkeys(m for r in rows.values() for m in r))
    print(f"\ninput-size sweep, {metric_name} (%): one row per --load_size")
    print(f"{'size':>6} " + " ".join(f"{m:>10}" for m in methods))
    for size, r in rows.items():
        print(f"{size:>6} " + " ".join(f"{'-' if r.get(m) is None else format(100 * r[m], '.2f'):>10}"
                                       for m in methods))
    if getattr(args, "output_json", None):
        out = Path(args.output_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps({"run": run.info, "metric": metric_name, "sweep": {str(s): r for s, r in rows.items()}},
                                  indent=1))
        run.log.info(f"wrote {out}")
    if failures:
        raise ItemFailures(f"{len(failures)} failure(s) in the sweep", failures)
