"""User-facing errors.

Every error a user can cause (a bad file, a bad flag, a missing weight file) is a :class:`LiftKitError` whose message
is one line that names the culprit and says what to do. Scripts print ``error: <message>`` and exit non-zero instead
of showing a traceback; anything else escaping is a bug.
"""


class LiftKitError(Exception):
    """Base class: a one-line, actionable message for the user."""


class ImageLoadError(LiftKitError):
    """An input image cannot be read or used (empty, truncated, not an image, too small, too large)."""


class WeightsNotFoundError(LiftKitError):
    """No weight file was found in any of the places looked at, and downloading was not allowed or failed."""


class CheckpointError(LiftKitError):
    """A checkpoint file is malformed, partial or does not fit the model it is loaded into."""


class IncompatibleLiftError(LiftKitError):
    """A LiFT module is applied to a backbone, layer, facet or channel count it was not trained for."""


class ConfigError(LiftKitError):
    """An unknown name or an unusable option value (model type, facet, layer, size...)."""


class DatasetError(LiftKitError):
    """A dataset folder, list file or annotation is missing, empty or inconsistent (names the sequence and frame)."""


def failure_report(header: str, items) -> str:
    """The end-of-run summary every batch script prints to stderr: ``error: <header>:`` then one ``  - item`` line
    per failure (each item already a one-line message)."""
    return "\n".join([f"error: {header}:"] + [f"  - {item}" for item in items])


class OutputError(LiftKitError):
    """An output file or folder cannot be written (a folder where a file is wanted, no space, read-only...)."""


class MemoryBudgetError(ConfigError):
    """A run would allocate more than ``--max_memory_gb``: refused before allocating, naming the flag to change."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its class name when the message is empty (``IndexError``,
    ``EOFError`` from an empty file have none)."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line:
            if len(line) > 160 and ". " in line:  # torch's zip errors append a paragraph of advice
                line = line.split(". ")[0] + "."
            return line
    return type(exc).__name__


def unreadable_file_message(kind: str, path, exc: BaseException, what_to_do: str) -> str:
    """One line for a weight/checkpoint file that cannot be read: empty (0 bytes), truncated or not such a file."""
    import os

    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    if size == 0:
        why = "it is empty (0 bytes)"
    else:
        why = f"it is truncated or not a {kind} ({type(exc).__name__}: {first_line(exc)})"
    return f"cannot read {kind} '{path}': {why}; {what_to_do}"
