"""Approximate time synchronisation of several message streams (no ROS needed).

:class:`ApproximateTimeSync` keeps a short queue per stream. When a message arrives it is
taken as the pivot: from every other stream the message closest in time is chosen, and if
the whole set spans at most ``slop`` seconds it is emitted, newest first preferred, and every
message up to the chosen ones is dropped (each message is used at most once as a set
member, and sets come out in time order). Messages older than the last emitted set are
discarded, queues are bounded by ``queue_size``.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional, Sequence

__all__ = ["ApproximateTimeSync"]


class ApproximateTimeSync:
    def __init__(self, names: Sequence[str], slop: float, queue_size: int = 10,
                 callback: Optional[Callable[[dict], None]] = None):
        if not names or len(set(names)) != len(names):
            raise ValueError(f"stream names must be distinct and non-empty, got {list(names)}")
        if slop < 0 or queue_size < 1:
            raise ValueError("slop must be >= 0 and queue_size >= 1")
        self.names = list(names)
        self.slop = float(slop)
        self.queues: dict[str, deque] = {n: deque(maxlen=queue_size) for n in self.names}
        self.callback = callback
        self.last_stamp = float("-inf")
        self.emitted = 0
        self.dropped = 0

    def add(self, name: str, stamp: float, msg: Any) -> Optional[dict]:
        """Add ``msg`` with time ``stamp`` (seconds) to stream ``name``; returns the matched
        set ``{name: (stamp, msg)}`` when one completes (and calls the callback), else None."""
        if name not in self.queues:
            raise KeyError(f"unknown stream {name!r} (streams: {', '.join(self.names)})")
        stamp = float(stamp)
        if stamp <= self.last_stamp:
            self.dropped += 1
            return None
        q = self.queues[name]
        if q and stamp < q[-1][0]:  # out of order within the stream: keep the queue sorted
            items = sorted([*q, (stamp, msg)], key=lambda it: it[0])
            q.clear()
            q.extend(items)
        else:
            q.append((stamp, msg))
        match = self._match(name, stamp)
        if match is None:
            return None
        for n, (s, _) in match.items():
            qn = self.queues[n]
            while qn and qn[0][0] <= s:
                qn.popleft()
        self.last_stamp = max(s for s, _ in match.values())
        self.emitted += 1
        if self.callback is not None:
            self.callback(match)
        return match

    def _match(self, pivot_name: str, pivot: float) -> Optional[dict]:
        chosen = {}
        for n in self.names:
            q = self.queues[n]
            if not q:
                return None
            if n == pivot_name:
                chosen[n] = next(it for it in reversed(q) if it[0] == pivot)
                continue
            chosen[n] = min(q, key=lambda it: abs(it[0] - pivot))
        stamps = [s for s, _ in chosen.values()]
        if max(stamps) - min(stamps) > self.slop:
            return None
        return chosen

    def reset(self) -> None:
        for q in self.queues.values():
            q.clear()
        self.last_stamp = float("-inf")
