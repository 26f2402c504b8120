"""Log lines on standard error, for the commands (the CLI, `warpdrive serve`, a model's process).

`StderrHandler` looks `sys.stderr` up at each record instead of keeping the stream it was
installed with: a handler holding the stream of its day writes into a closed file once that
stream is gone (pytest's capture of one in-process run, a replaced `sys.stderr`), where logging
prints "--- Logging error ---" and a traceback for every later record, and where standard error
itself is closed the log call raises (logging's report goes to that same closed stream and only
OSError is swallowed there). A record that cannot be written is dropped: there is nowhere left
to say so, and a server's log line must never take its caller down.
"""

from __future__ import annotations

import logging
import sys


class StderrHandler(logging.Handler):
    """Writes each record to the current `sys.stderr` (see the module docstring)."""

    terminator = "\n"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)  # a bad log call (its arguments): logging's own report
            return
        stream = sys.stderr
        if stream is None:  # (interpreter shutdown, or started without one)
            return
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):  # closed, a broken pipe, a full disk
            pass


def stderr_handler(fmt: str, datefmt: str | None = None) -> StderrHandler:
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    return handler
