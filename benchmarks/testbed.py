"""Local stand-ins for a cluster's parts, shared by benchmarks/faults.py and the tests: an S3 server (moto's
server mode on 127.0.0.1, as Ray's own storage tests use) and a two-node Ray cluster whose worker node
sees none of the head's files, with a way to lose that node. Each stops only the processes it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BIN = Path(sys.executable).parent  # this interpreter's moto and ray (ones on PATH may belong to another Python)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """A running moto server: `fs` reaches it (with the test credentials), `query` is the URI query string
    that points a storage URI at it (`s3://bucket/prefix` + query): through `relay` where the server was
    started switchable."""

    proc: subprocess.Popen
    fs: pafs.S3FileSystem
    query: str
    relay: Relay | None = None

    def freeze(self) -> None:
        """Stop answering (SIGSTOP): connections hang and time out, as with a server or network that hangs."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def down(self) -> None:
        """Gone (a switchable server only): connections refused and those open cut, its buckets kept."""
        assert self.relay is not None, "s3_server(switchable=True) has a relay to take down"
        self.relay.down()

    def up(self) -> None:
        assert self.relay is not None, "s3_server(switchable=True) has a relay to bring up"
        self.relay.up()


class Relay:
    """A TCP relay on 127.0.0.1 in front of a local server, which can be taken down (its listening socket
    closed and every open connection cut: clients get "connection refused", as from a server that is gone)
    and brought up again on the same port, while the server behind it keeps its state."""

    def __init__(self, target: int) -> None:
        self.port, self.target = free_port(), target
        self._lock, self._open, self._listener = threading.Lock(), set(), None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        with self._lock:
            cut, self._open = self._open, set()
        for sock in [listener, *cut]:
            with contextlib.suppress(OSError, AttributeError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on it
            with contextlib.suppress(OSError, AttributeError):
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # taken down
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()  # never stalls accept

    def _connect(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            server.settimeout(None)
        except OSError:  # the server behind it is not up (yet): refused, as without the relay
            client.close()
            return
        with self._lock:
            self._open |= {client, server}
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(1 << 16):
                b.sendall(data)
        for sock in (a, b):  # the other direction's thread wakes, finds them closed and ends too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with self._lock:
            self._open -= {a, b}


@contextlib.contextmanager
def s3_server(bucket: str = "studies", switchable: bool = False) -> Iterator[S3Server]:
    """A moto S3 server on a free port of 127.0.0.1 with `bucket` made; the caller sets CREDENTIALS in the
    environment of whatever talks to it. `switchable`: reached through a Relay, so that it can go down and
    come back with its buckets. Killed (by its pid) at the end."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    relay = None
    try:
        relay = Relay(port) if switchable else None
        reach = relay.port if relay else port
        endpoint = {"endpoint_override": f"127.0.0.1:{reach}", "scheme": "http", "region": "us-east-1"}
        keys = {"access_key": CREDENTIALS["AWS_ACCESS_KEY_ID"], "secret_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
        fs = pafs.S3FileSystem(**endpoint, **keys, allow_bucket_creation=True)
        deadline = time.time() + 30
        while True:
            try:
                fs.create_dir(bucket)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        query = f"?endpoint_override=127.0.0.1:{reach}&scheme=http&region=us-east-1"
        yield S3Server(proc, fs, query, relay)
    finally:
        if relay is not None:
            relay.down()
        proc.kill()  # frozen or not
        proc.wait()


@contextlib.contextmanager
def split_cluster(out: Path) -> Iterator[str]:
    """A Ray head node and a worker node (one CPU each) where the worker does NOT see `out`: its Ray runs in
    its own mount namespace with a private tmpfs over `out`, as on a second machine (needs root and
    `unshare`). Yields the head's address; stops this cluster's processes only (by its temp dir and port)."""
    out.mkdir(parents=True, exist_ok=True)
    temp = Path("/tmp") / f"aimray-split-{os.getpid()}-{free_port()}"
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    ray = str(BIN / "ray")
    head = [ray, "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp}"]
    head += ["--include-dashboard=false", "--disable-usage-stats"]
    join = f"{ray} start --address=127.0.0.1:{port} --num-cpus=1 --disable-usage-stats"
    worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"mount -t tmpfs tmpfs {out} && {join}"]
    try:
        for cmd in (head, worker):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        for pattern in (str(temp), f"127.0.0.1:{port}", f"gcs-address=[^ ]*:{port}"):
            subprocess.run(["pkill", "-9", "-f", pattern], check=False)
        time.sleep(1)


def lose_the_worker_node(address: str, driver: subprocess.Popen, out: Path, timeout: float = 300) -> str | None:
    """SIGKILL every process of `split_cluster`'s worker node (the mount namespace of its raylet) once a
    sweep run there has written a checkpoint since this was called (in the node's own `out`, seen through
    /proc/<pid>/root): its trial is mid-way. The trial's id, or None if none did before `timeout` or the
    driver ended."""
    port = address.rsplit(":", 1)[1]
    mine, start = os.readlink("/proc/self/ns/mnt"), time.time()
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        procs = _processes()
        raylets = [pid for pid, (ns, cmd) in procs.items() if ns != mine and "raylet" in cmd and f":{port}" in cmd]
        for raylet in raylets:
            there = Path(f"/proc/{raylet}/root{out}") / "runs"
            with contextlib.suppress(OSError):
                new = [c for c in there.glob("*/order*/checkpoints/t*") if c.stat().st_mtime > start]
                if new:
                    node = procs[raylet][0]
                    for pid, (ns, _) in procs.items():
                        if ns == node:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                    return new[0].relative_to(there).parts[0]
        time.sleep(0.05)
    return None


def _processes() -> dict[int, tuple[str, str]]:
    """{pid: (mount namespace, command line)} of this machine's processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            found[int(entry.name)] = (os.readlink(entry / "ns" / "mnt"), cmdline)
        except (ValueError, OSError):
            continue
    return found
