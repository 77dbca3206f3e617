"""``make run``'s console: one line per finished step, the assets' own messages and the domain's progress lines
(each finished Ray task), warnings in one line, no Dagster plumbing, no tracebacks; ``--debug`` keeps Dagster's
full DEBUG event log instead.

Only what reaches the terminal changes: the Dagster instance records every event either way, and an error is
always printed (as one line; the Dagster UI keeps its traceback).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from typing import TextIO

import dagster as dg

# Progress bars of the libraries the pipeline calls: tqdm (pulled in by several) and MLflow's artifact downloads.
QUIET_ENVIRONMENT = {"TQDM_DISABLE": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# Libraries whose INFO lines narrate their plumbing (schema migrations, "Created version 3 of model ...").
QUIET_LIBRARIES = ("mlflow", "alembic")
# Notices that ask nothing of the reader, by logger: Ray turning token authentication on for a local cluster (its
# default), MLflow saying each pyfunc model is pickled (the registry's python models are, by design).
EXPECTED_NOTICES = {
    "ray._private.authentication.authentication_token_setup": "Token authentication is enabled for this Ray cluster",
    "mlflow.pyfunc": "Passing a Python object as `python_model` causes it to be serialized using CloudPickle",
}
# The events that end a step; the others are plumbing (inputs loaded, outputs handled, ...).
STEP_END_EVENTS = ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED")
# Dagster's message for a step it does not run because a step it depends on failed.
UPSTREAM_FAILED = re.compile(r"^Dependencies for step \S+ failed: \[(.*)\]")
# A message counting "done/total" (epochs, timesteps, Ray tasks) is one of a sequence: the console shows it as
# the sequence starts, passes half way and ends; the Dagster UI keeps every line.
PROGRESS_COUNT = re.compile(r"(\d+)/(\d+)")
PROGRESS_STAGES = 2
SHORT_COUNT = 4  # a count this short (3 Ray tasks) takes seconds a step: only its end is shown
MESSAGE_INDENT = " " * 13  # the width of a step line's "[ 7/23 01:23] " prefix


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with one text."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"warning: {category.__name__}: {str(message).strip().splitlines()[0]} ({filename}:{lineno})\n"


def quiet_console() -> None:
    """Silence the console's noise for this process: Dagster's beta and preview notices, progress bars, the
    libraries' INFO plumbing; other warnings print as one line. Errors stay visible. Call before importing the
    definitions (their imports warn)."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)
    from resources.state_home import DOMAIN_LOGGER  # after the filters: the resources package warns on import

    warnings.formatwarning = _one_line_warning
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # The run's event log captures the domain's loggers (resources/state_home.py); a handler above them (one a
    # library set on the root logger) would print each of their lines a second time.
    logging.getLogger(DOMAIN_LOGGER).propagate = False
    for name, notice in EXPECTED_NOTICES.items():
        logging.getLogger(name).addFilter(_DropMessage(notice))


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] + (" …" if len(lines) > 1 else "") if lines else ""


class ProgressHandler(logging.Handler):
    """Writes a run's log records as a person reads them: one line per step end, numbered ``[done/total]`` with
    the run's elapsed time, and the messages of the steps (INFO and above) indented under them.

    :param total_steps: the steps the run executes
    :param describe_failure: one line for a failed step's event (the cause, or a gate verdict)
    """

    def __init__(
        self, total_steps: int, describe_failure: Callable[[object], str], stream: TextIO | None = None
    ) -> None:
        super().__init__(logging.DEBUG)
        self.total, self.describe_failure = total_steps, describe_failure
        self.stream = stream or sys.stdout
        self.done, self.started = 0, time.monotonic()
        self.progress_stages: dict[tuple[str, str], int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.line(record)
            if line is not None:
                self.stream.write(line + "\n")
                self.stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)

    def line(self, record: logging.LogRecord) -> str | None:
        """The console line of one record, ``None`` for plumbing."""
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        if event is not None:
            return self._event_line(event) if event.event_type_value in STEP_END_EVENTS else None
        if record.levelno < logging.INFO:
            return None
        message = _first_line(meta.get("orig_message") or record.getMessage())
        if meta.get("resource_name") and record.levelno == logging.INFO:
            return (
                None  # a resource narrating its set-up ("Starting a new mlflow run ..."): the summary has it
            )
        source = meta.get("step_key") or meta.get("resource_name") or "run"
        upstream = UPSTREAM_FAILED.match(message)
        if upstream and meta.get("step_key"):  # Dagster says so in a message, not an event, and ends the step
            needs = upstream.group(1).replace("'", "")
            return f"{self._prefix(source)} not run: it needs {needs}, which failed"
        if record.levelno == logging.INFO and not self._progress_shown(source, message):
            return None
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"{MESSAGE_INDENT}{source}: {level}{message}"

    def _progress_shown(self, source: str, message: str) -> bool:
        """Whether a message is shown: any but a progress count that stays in the stage last shown, or a short
        count before its end."""
        count = PROGRESS_COUNT.search(message)
        if count is None or int(count.group(2)) <= 0:
            return True
        done, total = int(count.group(1)), int(count.group(2))
        if total <= SHORT_COUNT:
            return done >= total
        key = (source, message[: count.start()])
        stage = min(PROGRESS_STAGES, done * PROGRESS_STAGES // total)
        if self.progress_stages.get(key) == stage:
            return False
        self.progress_stages[key] = stage  # a lower stage starts a new sequence
        return True

    def _prefix(self, step: str) -> str:
        """``[done/total mm:ss] step`` of the step that just ended."""
        self.done += 1
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        return f"[{self.done:>{len(str(self.total))}}/{self.total} {minutes:02d}:{seconds:02d}] {step}"

    def _event_line(self, event) -> str:
        prefix = self._prefix(event.step_key)
        if event.event_type_value == "STEP_SUCCESS":
            return f"{prefix} done in {event.event_specific_data.duration_ms / 1000:.1f} s"
        if event.event_type_value == "STEP_SKIPPED":
            return f"{prefix} skipped: an input it needs was not produced"
        return f"{prefix} {self.describe_failure(event)}"


def progress_logger(total_steps: int, describe_failure: Callable[[object], str]) -> dg.LoggerDefinition:
    """A Dagster logger writing :class:`ProgressHandler` lines to stdout, for a job of ``total_steps`` steps."""

    def build(_init_context) -> logging.Logger:
        logger = logging.Logger("rl_trading.console", logging.DEBUG)  # step events arrive at DEBUG
        logger.addHandler(ProgressHandler(total_steps, describe_failure))
        return logger

    return dg.LoggerDefinition(build, description="make run's console: one line per step, no plumbing")


def console_job(job: dg.JobDefinition, describe_failure: Callable[[object], str]) -> dg.JobDefinition:
    """``job`` writing :func:`progress_logger` lines instead of Dagster's DEBUG console log, when its run config
    holds :data:`CONSOLE_LOGGERS` (Dagster builds only the loggers a run config names)."""
    return job.with_logger_defs(
        {"console": progress_logger(len(job.nodes_in_topological_order), describe_failure)}
    )


CONSOLE_LOGGERS = {"loggers": {"console": {}}}
DEBUG_LOGGERS = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
