"""An rclpy executor that runs callbacks on the spinning thread, except the slow ones.

rclpy's ``MultiThreadedExecutor`` hands every callback to a thread pool. Each hand-over wakes
its wait loop two more times, and that loop is Python: with a few hundred messages a second
(joint states, TCP pose and wrench at 100 Hz each) it keeps a core busy and holds the GIL
so long that the other threads of the process wait for hundreds of milliseconds. In
fr3_bridge the thread that waits is the control loop with the watchdog
(``bench/executor_load.py`` measures it).

:class:`OffloadExecutor` is a ``SingleThreadedExecutor`` that hands only the callbacks of
the callback groups named at construction to worker threads: long service calls such as a
reset that moves the arm home, a camera timer that renders, a policy reload; and the tasks
the executor runs for the objects named as ``task_owners``: an action server's goal execution
(rclpy runs it as an executor task, not as a callback of its group). Everything else runs
inline, an action server's goal and cancel requests included. The slow group's callback does not block the others, and the
others cost what they cost in a single-threaded executor.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional

from rclpy.executors import ConditionReachedException, ShutdownException, SingleThreadedExecutor, TimeoutException


class OffloadExecutor(SingleThreadedExecutor):
    """Single-threaded executor with worker threads for the callbacks of ``offload`` groups
    and the tasks of ``task_owners`` (see the module doc).

    Each group in ``offload`` and each task owner gets one worker thread, so a MutuallyExclusiveCallbackGroup
    stays one callback at a time and two slow groups do not wait for each other. An exception
    raised by an offloaded callback is raised again from the next :meth:`spin_once` (as
    the executor's own callbacks raise from ``spin``), so a failing callback is never silent.
    """

    def __init__(self, offload: Iterable = (), *, task_owners: Iterable = (), context=None) -> None:
        super().__init__(context=context)
        self._offload = list(offload)
        self._owners = list(task_owners)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self._offload) + len(self._owners)),
                                        thread_name_prefix="offload")
        self._lock = threading.Lock()
        self._handed: set = set()          # tasks given to the pool and not finished yet
        self._slow_tasks: set = set()      # executor tasks of the task owners (goal executions)
        self._error: Optional[BaseException] = None

    def offloads(self, group) -> bool:
        return group is not None and any(group is g for g in self._offload)

    def create_task(self, callback, *args, **kwargs):
        """As rclpy's; a task whose callback is a method of one of the ``task_owners`` (an
        ActionServer's goal execution) runs on a worker thread."""
        task = super().create_task(callback, *args, **kwargs)
        owner = getattr(callback, "__self__", None)
        if owner is not None and any(owner is o for o in self._owners):
            with self._lock:
                self._slow_tasks.add(task)
        return task

    def spin_once(self, timeout_sec: Optional[float] = None) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error
        try:
            handler, entity, _node = self.wait_for_ready_callbacks(timeout_sec=timeout_sec)
        except (ShutdownException, TimeoutException, ConditionReachedException):
            return
        group = getattr(entity, "callback_group", None)
        with self._lock:
            offloaded = handler in self._slow_tasks or self.offloads(group)
            # A handed-over task that has not started yet is offered again by the wait: it
            # belongs to its worker, never to this thread.
            if offloaded and handler in self._handed:
                return
            if offloaded:
                self._handed.add(handler)
        if offloaded:
            self._pool.submit(self._run_offloaded, handler)
            return
        handler()
        exception = handler.exception()
        if exception is not None:
            raise exception
        handler.result()

    def _run_offloaded(self, handler) -> None:
        try:
            handler()
            exception = handler.exception()
            if exception is not None:
                with self._lock:
                    self._error = self._error or exception
                try:
                    self.wake()      # the spinning thread raises it
                except Exception:    # the executor was shut down meanwhile
                    pass
        finally:
            with self._lock:
                self._handed.discard(handler)
                if handler.done():
                    self._slow_tasks.discard(handler)

    def shutdown(self, timeout_sec: Optional[float] = None) -> bool:
        done = super().shutdown(timeout_sec)
        self._pool.shutdown(wait=False)
        return done
