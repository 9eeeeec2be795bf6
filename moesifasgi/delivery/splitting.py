"""Posting one claimed batch and isolating the rows Moesif refuses: written once for
events and profiles.

Moesif answers 400 (a bad row) or 413 (too large) for a whole batch. The batch
is then split in halves, the first half posted first (queue order), until each
refused row is alone; a row that holds several items (an events segment) is
then cut into its items (`split`) and those are isolated the same way; an item
refused alone is the caller's to dead-letter. Any
other failure stops the batch: the caller gives back the rows not settled.
"""
from __future__ import annotations

from typing import Awaitable, Callable, List, Optional, Sequence, Tuple, TypeVar

from .client import OK, REJECT, TOO_LARGE, PostResult

R = TypeVar("R")

SPLIT_STATUSES = frozenset({400, 413})


async def post_isolating(
    rows: Sequence[R],
    post: Callable[[List[R]], Awaitable[PostResult]],
    *,
    accepted: Callable[[List[R], bool], Awaitable[None]],
    rejected: Callable[[R, PostResult], Awaitable[None]],
    unsettled: Optional[List[R]] = None,
    split: Optional[Callable[[R], Awaitable[List[R]]]] = None,
) -> Tuple[Optional[PostResult], List[R]]:
    """Post `rows`; return (None, []) when every row was accepted or refused alone,
    else (the failed post's result, the rows not settled, in queue order).

    `accepted(part, whole)` gets each accepted part, `whole` when it is all of
    `rows` (never split). `unsettled`, when given, is kept equal to the rows not
    settled yet, for a caller that must give them back if it is cancelled mid-post.
    `split(row)`, when given, cuts a refused row into its items (or returns [row]
    when it holds one; [] when it is no longer the caller's).
    """
    stack = [list(rows)] if rows else []
    whole = True  # until the first split
    while stack:
        part = stack.pop()
        if unsettled is not None:
            unsettled[:] = [r for p in [part, *reversed(stack)] for r in p]
        result = await post(part)
        if result.outcome == OK:
            await accepted(part, whole)
        elif result.outcome in (REJECT, TOO_LARGE) and result.status in SPLIT_STATUSES:
            whole = False
            if len(part) == 1:
                pieces = [part[0]] if split is None else await split(part[0])
                if len(pieces) > 1:  # refused whole already: post its halves
                    middle = len(pieces) // 2
                    stack += [pieces[middle:], pieces[:middle]]
                elif pieces:
                    await rejected(pieces[0], result)
            else:
                middle = len(part) // 2
                stack += [part[middle:], part[:middle]]  # the first half is popped first
        else:
            return result, [r for p in [part, *reversed(stack)] for r in p]
    if unsettled is not None:
        unsettled[:] = []
    return None, []
