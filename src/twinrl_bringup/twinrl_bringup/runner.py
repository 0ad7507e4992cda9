"""``twinrl up GRAPH``: run a graph description without ``ros2 launch``.

Each node runs as its own process (own process group, killed with the runner even if the
runner itself is killed: PR_SET_PDEATHSIG), with ROS arguments for its name, namespace,
parameters (a generated parameter file) and remappings. Output lines are prefixed with the
node's name in a stable colour. The graph stops on Ctrl-C / SIGTERM, when a required node
exits, or after ``--duration`` seconds; stopping sends SIGINT, then SIGTERM, then SIGKILL to
every node's process group. Exit status: 0 when every node ended cleanly, 1 when a node
failed (non-zero exit or killed by a signal it was not sent), 2 for a bad graph or a node
that cannot be found (then nothing is started).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .graph import ResolvedGraph, ResolvedNode, find_executable, load_graph, node_command, params_document, resolve
from .workspace import workspace_env

COLOURS = [32, 36, 33, 35, 34, 92, 96, 93, 95, 94]
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class _Proc:
    node: ResolvedNode
    popen: subprocess.Popen
    colour: int
    reader: threading.Thread | None = None
    stop_requested: bool = False
    returncode: int | None = None
    failed: bool = False
    extra: dict = field(default_factory=dict)


class GraphRunner:
    def __init__(self, graph: ResolvedGraph, *, colour: bool | None = None, out=None,
                 grace_s: float = 5.0, env: dict | None = None):
        self.graph = graph
        self.out = out or sys.stdout
        self.colour = self.out.isatty() if colour is None else colour
        self.grace_s = grace_s
        self.env = workspace_env(env if env is not None else dict(os.environ))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.procs: list[_Proc] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._tmp = None
        self.width = max([len(n.label) for n in graph.nodes] + [6])

    # -------------------------------------------------------------- output
    def _emit(self, label: str, colour: int, line: str) -> None:
        prefix = f"[{label}]".ljust(self.width + 2)
        if self.colour:
            prefix = f"\033[{colour}m{prefix}\033[0m"
        with self._lock:
            self.out.write(f"{prefix} {line.rstrip()}\n")
            self.out.flush()

    def log(self, msg: str) -> None:
        self._emit("twinrl", 1, msg)

    def _pump(self, proc: _Proc) -> None:
        for line in iter(proc.popen.stdout.readline, ""):
            self._emit(proc.node.label, proc.colour, line)
        proc.popen.stdout.close()

    # -------------------------------------------------------------- lifecycle
    def prepare(self) -> list[tuple[ResolvedNode, list[str]]]:
        """Resolve executables and write parameter files; raises before anything starts."""
        self._tmp = tempfile.TemporaryDirectory(prefix=f"twinrl-{self.graph.name}-")
        plan = []
        for node in self.graph.nodes:
            exe = find_executable(node.package, node.executable, self.env)
            pfile = None
            if node.parameters:
                pfile = str(Path(self._tmp.name) / f"{node.label.replace('/', '__')}.yaml")
                Path(pfile).write_text(yaml.safe_dump(params_document(node), sort_keys=False))
            plan.append((node, node_command(node, exe, pfile)))
        return plan

    def start(self, plan) -> None:
        for i, (node, cmd) in enumerate(plan):
            env = dict(self.env)
            env.update(node.env)
            popen = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, bufsize=1, start_new_session=True, preexec_fn=_die_with_parent)
            proc = _Proc(node, popen, COLOURS[i % len(COLOURS)])
            proc.reader = threading.Thread(target=self._pump, args=(proc,), daemon=True)
            proc.reader.start()
            self.procs.append(proc)
            self.log(f"started {node.label} ({node.package}/{node.executable}) pid {popen.pid}")

    def _signal_group(self, proc: _Proc, sig: int) -> None:
        try:
            os.killpg(proc.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        """SIGINT every node, then SIGTERM, then SIGKILL, each after a grace period."""
        self._stopping.set()
        for sig, wait in ((signal.SIGINT, self.grace_s), (signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
            alive = [p for p in self.procs if p.popen.poll() is None]
            if not alive:
                break
            for p in alive:
                p.stop_requested = True
                self._signal_group(p, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(p.popen.poll() is None for p in alive):
                time.sleep(0.05)
        for p in self.procs:  # reap anything a node left behind in its own group
            self._signal_group(p, signal.SIGKILL)
            self._record_exit(p)
            if p.reader:
                p.reader.join(timeout=2)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _record_exit(self, p: _Proc) -> None:
        rc = p.popen.poll()
        if rc is None or p.returncode is not None:
            return
        p.returncode = rc
        # A node that exits with an error, or dies of a signal nobody sent it, failed.
        # Exit codes after our SIGINT/SIGTERM are a node's own shutdown and do not count,
        # except a crash that had already happened.
        p.failed = rc != 0 and not p.stop_requested

    def run(self, duration: float | None = None) -> int:
        try:
            plan = self.prepare()
        except (FileNotFoundError, OSError) as exc:
            self.log(f"error: {exc}")
            return 2
        for inc in self.graph.includes:
            self.log(f"skipping include {inc.package}/{inc.launch}: `twinrl up` starts the project's "
                     f"nodes only; use `ros2 launch twinrl_bringup {self.graph.name}.launch.py` on a full "
                     "ROS 2 install to bring up upstream drivers")
        previous = {}

        def _handler(signum, _frame):
            self._stopping.set()

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[s] = signal.signal(s, _handler)
        reason = "stopped"
        try:
            self.start(plan)
            t_end = None if duration is None else time.monotonic() + duration
            while not self._stopping.is_set():
                for p in self.procs:
                    if p.returncode is None and p.popen.poll() is not None:
                        self._record_exit(p)
                        how = (f"exit code {p.returncode}" if p.returncode >= 0
                               else f"signal {signal.Signals(-p.returncode).name}")
                        self.log(f"{p.node.label} exited ({how})")
                        if p.node.required:
                            reason = f"required node {p.node.label} exited"
                            self._stopping.set()
                if all(p.returncode is not None for p in self.procs):
                    reason = "all nodes exited"
                    self._stopping.set()
                if t_end is not None and time.monotonic() >= t_end:
                    reason = f"duration {duration:g} s reached"
                    self._stopping.set()
                self._stopping.wait(0.1)
        finally:
            self.log(f"shutting down ({reason})")
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)
        failed = [p for p in self.procs if p.failed]
        for p in failed:
            self.log(f"FAILED: {p.node.label} (exit {p.returncode})")
        return 1 if failed else 0


def _cmd_up(args) -> int:
    graph = load_graph(args.graph)
    overrides = {}
    for kv in args.set:
        if "=" not in kv:
            print(f"twinrl up: error: --set expects KEY=VALUE, got {kv!r}", file=sys.stderr)
            return 2
        k, v = kv.split("=", 1)
        overrides[k.strip()] = v
    resolved = resolve(graph, overrides)
    if args.dry_run:
        env = workspace_env(dict(os.environ))
        for node in resolved.nodes:
            try:
                exe = find_executable(node.package, node.executable, env)
            except FileNotFoundError as exc:
                exe = f"<{exc}>"
            print(" ".join(node_command(node, exe, "<params.yaml>" if node.parameters else None)))
        return 0
    runner = GraphRunner(resolved, colour=False if args.no_color else None)
    return runner.run(duration=args.duration)


def register(subparsers) -> None:
    p = subparsers.add_parser("up", help="start a graph (config/graphs/GRAPH.yaml) as node processes")
    p.add_argument("graph", help="graph name or path to a graph YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a graph argument (repeatable)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop the graph after S seconds")
    p.add_argument("--dry-run", action="store_true", help="print the node command lines and exit")
    p.add_argument("--no-color", action="store_true", help="no ANSI colours in prefixes")
    p.set_defaults(func=_cmd_up)
