"""OffloadExecutor: slow callback groups on worker threads, everything else inline."""
import threading
import time

import pytest

pytestmark = [pytest.mark.ros]


class Spinner:
    """Spins an executor on a thread of its own; keeps what spin_once raised."""

    def __init__(self, executor):
        self.executor = executor
        self.errors = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                self.errors.append(exc)

    def stop(self):
        self.running = False
        self.thread.join(timeout=5)
        self.executor.shutdown()


@pytest.fixture
def rig(rclpy_context):
    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from std_srvs.srv import Trigger

    from twinrl_bringup.executor import OffloadExecutor

    node = rclpy.create_node("offload_test", context=rclpy_context)
    slow = MutuallyExclusiveCallbackGroup()
    log = {"service": [], "timer": [], "active": 0, "overlap": 0}
    lock = threading.Lock()

    def on_slow(req, resp):
        with lock:
            log["active"] += 1
            log["overlap"] = max(log["overlap"], log["active"])
        log["service"].append((threading.get_ident(), time.monotonic()))
        time.sleep(0.4)
        with lock:
            log["active"] -= 1
        resp.success = True
        return resp

    node.create_service(Trigger, "/offload_test/slow", on_slow, callback_group=slow)
    node.create_timer(0.02, lambda: log["timer"].append((threading.get_ident(), time.monotonic())))
    client_node = rclpy.create_node("offload_test_client", context=rclpy_context)
    client = client_node.create_client(Trigger, "/offload_test/slow")
    executor = OffloadExecutor(offload=[slow], context=rclpy_context)
    executor.add_node(node)
    executor.add_node(client_node)
    spinner = Spinner(executor)
    try:
        yield node, client, spinner, log, slow
    finally:
        spinner.stop()
        node.destroy_node()
        client_node.destroy_node()


def test_slow_service_runs_on_a_worker_while_the_timer_keeps_its_rate(rig):
    from std_srvs.srv import Trigger

    node, client, spinner, log, _ = rig
    assert client.wait_for_service(timeout_sec=5.0)
    futures = [client.call_async(Trigger.Request()) for _ in range(4)]
    t0 = time.monotonic()
    deadline = t0 + 10.0
    while not all(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.01)
    t1 = time.monotonic()
    assert all(f.done() and f.result().success for f in futures)
    assert spinner.errors == []
    spin_thread = spinner.thread.ident
    # each request ran exactly once, on a worker thread, one at a time (mutually exclusive group)
    assert len(log["service"]) == 4
    assert all(tid != spin_thread for tid, _ in log["service"])
    assert log["overlap"] == 1
    # the timer ran on the spinning thread, and kept ticking through 1.6 s of service sleep:
    # a single-threaded executor would have given it no tick while a request slept
    ticks = [t for tid, t in log["timer"] if t0 <= t <= t1]
    assert all(tid == spin_thread for tid, _ in log["timer"])
    assert t1 - t0 >= 1.5
    assert len(ticks) >= 0.5 * (t1 - t0) / 0.02, (len(ticks), t1 - t0)
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.3


def test_an_offloaded_callback_error_is_raised_by_spin(rclpy_context):
    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

    from twinrl_bringup.executor import OffloadExecutor

    node = rclpy.create_node("offload_error_test", context=rclpy_context)
    slow = MutuallyExclusiveCallbackGroup()
    calls = []

    def boom():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("render failed: camera 'wrist' has no frame")

    node.create_timer(0.05, boom, callback_group=slow)
    executor = OffloadExecutor(offload=[slow], context=rclpy_context)
    executor.add_node(node)
    spinner = Spinner(executor)
    try:
        deadline = time.monotonic() + 5.0
        while not spinner.errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert spinner.errors and isinstance(spinner.errors[0], ValueError)
        assert "camera 'wrist'" in str(spinner.errors[0])
        # raised once; the executor goes on running the timer afterwards
        n = len(calls)
        time.sleep(0.3)
        assert len(calls) > n and len(spinner.errors) == 1
    finally:
        spinner.stop()
        node.destroy_node()


def test_action_goal_runs_on_a_worker_and_can_be_cancelled(rclpy_context):
    """An action server named as a task owner: its goal execution (an executor task, not a
    callback of a group) runs on a worker, while the spinning thread keeps a timer going and
    serves the cancel request that ends it."""
    import rclpy
    from rclpy.action import ActionClient, ActionServer, CancelResponse
    from twinrl_msgs.action import RunEpisode

    from twinrl_bringup.executor import OffloadExecutor

    node = rclpy.create_node("offload_action_test", context=rclpy_context)
    seen = {"execute": [], "timer": []}

    def execute(goal_handle):
        seen["execute"].append(threading.get_ident())
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10.0:
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
                return RunEpisode.Result(message="cancelled")
            time.sleep(0.01)
        goal_handle.succeed()
        return RunEpisode.Result(message="ran out")

    server = ActionServer(node, RunEpisode, "/offload_test/episode", execute_callback=execute,
                          cancel_callback=lambda _h: CancelResponse.ACCEPT)
    node.create_timer(0.02, lambda: seen["timer"].append(time.monotonic()))
    client_node = rclpy.create_node("offload_action_client", context=rclpy_context)
    client = ActionClient(client_node, RunEpisode, "/offload_test/episode")
    executor = OffloadExecutor(task_owners=[server], context=rclpy_context)
    executor.add_node(node)
    executor.add_node(client_node)
    spinner = Spinner(executor)

    def wait(pred, timeout):
        t_end = time.monotonic() + timeout
        while not pred() and time.monotonic() < t_end:
            time.sleep(0.01)
        return pred()

    try:
        assert client.wait_for_server(timeout_sec=5.0)
        send = client.send_goal_async(RunEpisode.Goal(max_steps=5))
        assert wait(send.done, 5.0) and send.result().accepted
        assert wait(lambda: seen["execute"], 5.0)
        t0 = time.monotonic()
        time.sleep(0.5)
        ticks = [t for t in seen["timer"] if t >= t0]
        assert len(ticks) >= 10, len(ticks)            # the goal does not hold the spinning thread
        cancel = send.result().cancel_goal_async()
        result = send.result().get_result_async()
        assert wait(result.done, 5.0), "the cancel request was not served while the goal ran"
        assert result.result().result.message == "cancelled"
        assert seen["execute"] == [seen["execute"][0]] and seen["execute"][0] != spinner.thread.ident
        assert cancel.done() and spinner.errors == []
    finally:
        spinner.stop()
        server.destroy()
        node.destroy_node()
        client_node.destroy_node()
