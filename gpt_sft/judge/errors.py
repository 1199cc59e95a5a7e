"""What can go wrong asking a judge."""

from __future__ import annotations


class JudgeError(RuntimeError):
    """Base class of the judge's errors."""


class JudgeRequestError(JudgeError):
    """A request failed after all transport retries (connection error, timeout, 5xx, 429).

    The entry is recorded as unscored with reason ``"request_failed"`` and is *not* cached, so a
    later run asks again.
    """


class JudgeRejectedError(JudgeRequestError):
    """The server refused this one request (HTTP 400/413/422, e.g. prompt longer than the context).

    Not retried; the entry is unscored with reason ``"request_rejected"`` and not cached.
    """


class JudgeFatalError(JudgeError):
    """A failure that retrying cannot fix (401/403 bad key, 404 unknown model or URL): the run stops."""


class JudgeCacheBusyError(JudgeError):
    """Another evaluation holds the score cache."""


class JudgeUnavailableError(JudgeError):
    """Too many consecutive request failures: the run stops; finished entries stay in the cache."""
