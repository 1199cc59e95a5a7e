"""Asking a judge server many questions: a bounded number in flight, results handled as they finish,
and a stop when the server is plainly gone.

Scoring (:mod:`.scoring`) and making preference pairs (:mod:`.preferences`) both ask one question per
key; this is the loop they share, so both have the same concurrency bound, progress bar, interrupt
behaviour and failure stop.
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from tqdm.auto import tqdm

from .errors import JudgeUnavailableError

K = TypeVar("K")
R = TypeVar("R")


def ask_all(
    keys: Iterable[K],
    ask: Callable[[K], R],
    finish: Callable[[R], None],
    *,
    failure: Callable[[R], str | None],
    concurrency: int = 1,
    max_consecutive_failures: int = 3,
    progress: bool = True,
    desc: str = "Asking",
    unit: str = "question",
) -> None:
    """Call ``ask(key)`` for every key in a thread pool, at most ``concurrency`` at once, and
    ``finish(result)`` in the calling thread as each one finishes.

    ``failure(result)`` is the error text of a result that is a request failure (the server did not
    answer), else ``None``. ``max_consecutive_failures`` failures in a row raise
    :class:`JudgeUnavailableError` (0: never): a dead server should not cost every entry's retries.
    An exception from ``ask`` (e.g. :class:`~.errors.JudgeFatalError`) or ``finish`` (e.g.
    ``KeyboardInterrupt``) stops the run at once: queued questions are cancelled and in-flight ones
    abandoned, and what ``finish`` already handled stays handled (the callers' caches)."""
    keys = list(keys)
    limit = max(1, int(concurrency))
    bar = tqdm(total=len(keys), desc=desc, unit=unit, file=sys.stderr) if progress and keys else None
    complete = False
    failures = 0
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=limit, thread_name_prefix="judge")
    try:
        todo = iter(keys)
        in_flight: set[concurrent.futures.Future] = set()

        def refill() -> None:
            # submitting lazily keeps at most `limit` questions queued, so an interrupt abandons few
            while len(in_flight) < limit:
                key = next(todo, None)
                if key is None:
                    return
                in_flight.add(executor.submit(ask, key))

        refill()
        while in_flight:
            done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                in_flight.discard(future)
                result = future.result()  # JudgeFatalError propagates
                error = failure(result)
                failures = failures + 1 if error is not None else 0
                finish(result)
                if bar is not None:
                    bar.update(1)
                if max_consecutive_failures and failures >= max_consecutive_failures:
                    raise JudgeUnavailableError(
                        f"{failures} requests in a row failed; last error: {error}. "
                        "Finished entries are cached: fix the judge server and run again to resume."
                    )
            refill()
        complete = True
    finally:
        # do not wait for queued work on an error/interrupt; in-flight requests are abandoned
        executor.shutdown(wait=complete, cancel_futures=True)
        if bar is not None:
            bar.close()


__all__ = ["ask_all"]
