"""A real Spark standalone cluster on loopback: a master, N workers and a Spark Connect server.

Started from the `pyspark` wheel (it ships bin/spark-class, sbin/start-connect-server.sh and the
Spark Connect server jar) with Java 17. Used by the tests (one cluster per session, see
conftest.spark_remote) and by bench/spark_check.py. Every port is chosen here and bound to
127.0.0.1; each process runs in its own process group and is stopped by its id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from flowpipe.lab.demo import free_port


class SparkClusterError(Exception):
    """The cluster could not start (the message holds the tail of the logs)."""


def spark_home() -> Path:
    """SPARK_HOME of the installed pyspark wheel."""
    try:
        import pyspark
    except ImportError as exc:
        raise SparkClusterError(
            "pyspark is not installed: `make install` (the dev extra) installs it"
        ) from exc
    home = Path(pyspark.__file__).parent
    if not (home / "bin" / "spark-class").exists() or not (home / "jars").is_dir():
        raise SparkClusterError(
            f"{home} is the thin pyspark-client, not the full pyspark wheel (no bin/ or jars/)"
        )
    return home


def java_home() -> str:
    """JAVA_HOME of the `java` on PATH (Spark 4 needs Java 17 or 21)."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if not java:
        raise SparkClusterError(
            "java is not installed: apt-get install openjdk-17-jre-headless (.ci/run does)"
        )
    return str(Path(os.path.realpath(java)).parent.parent)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class SparkCluster:
    """Master + workers + Spark Connect server, all on 127.0.0.1, logs and scratch under workdir."""

    def __init__(
        self, workdir: Path, *, workers: int = 2, cores: int = 1, memory: str = "1g"
    ) -> None:
        self.workdir = Path(workdir)
        self.workers, self.cores, self.memory = workers, cores, memory
        self.procs: dict[str, subprocess.Popen] = {}
        self.master_port = self.connect_port = 0

    @property
    def remote(self) -> str:
        """The Spark Connect URL (sc://127.0.0.1:PORT)."""
        return f"sc://127.0.0.1:{self.connect_port}"

    def _env(self) -> dict[str, str]:
        home = spark_home()
        conf = self.workdir / "conf"  # empty: nothing from a user's own Spark configuration
        conf.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SPARK_", "PYSPARK_")) and k != "HADOOP_CONF_DIR"
        }
        env.update(
            SPARK_HOME=str(home),
            JAVA_HOME=java_home(),
            SPARK_CONF_DIR=str(conf),
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_LOCAL_HOSTNAME="127.0.0.1",
            SPARK_LOG_DIR=str(self.workdir / "logs"),
            SPARK_PID_DIR=str(self.workdir / "pids"),
            SPARK_WORKER_DIR=str(self.workdir / "work"),
            SPARK_LOCAL_DIRS=str(self.workdir / "tmp"),
            SPARK_NO_DAEMONIZE="1",
            SPARK_IDENT_STRING=f"flowpipe-{os.getpid()}",
        )
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        try:
            self.procs[name] = subprocess.Popen(
                argv,
                env=self._env(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole, by id
            )
        finally:
            log.close()

    def start(self, timeout: float = 240.0) -> str:
        """Start every process and wait until Spark Connect answers with every worker registered."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = spark_home()
        spark_class = str(home / "bin" / "spark-class")
        self.master_port = free_port()
        self.connect_port = free_port()
        master = f"spark://127.0.0.1:{self.master_port}"
        deadline = time.monotonic() + timeout
        try:
            self._spawn(
                "master",
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.master_port),
                    "--webui-port",
                    str(free_port()),
                ],
            )
            self._wait(lambda: _listening(self.master_port), "master", deadline)
            for i in range(self.workers):
                self._spawn(
                    f"worker{i + 1}",
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        master,
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        str(self.cores),
                        "--memory",
                        self.memory,
                        "--webui-port",
                        str(free_port()),
                    ],
                )
            # the connect server starts alongside the workers: its application gets their
            # executors as they register (a JVM start costs 10-40 s on a busy 2-core machine)
            self._spawn(
                "connect",
                [
                    str(home / "sbin" / "start-connect-server.sh"),
                    "--master",
                    master,
                    "--conf",
                    "spark.connect.grpc.binding.address=127.0.0.1",
                    "--conf",
                    f"spark.connect.grpc.binding.port={self.connect_port}",
                    "--conf",
                    "spark.ui.enabled=false",
                    "--conf",
                    "spark.driver.host=127.0.0.1",
                    "--conf",
                    "spark.driver.bindAddress=127.0.0.1",
                    "--conf",
                    f"spark.executor.memory={self.memory}",
                ],
            )
            self._wait(
                lambda: self._log("master").count("Registering worker") >= self.workers,
                "workers",
                deadline,
            )
            self._wait(
                lambda: (
                    "Spark Connect server started" in self._log("connect")
                    and _listening(self.connect_port)
                ),
                "Spark Connect server",
                deadline,
            )
            # every worker's executor joined the application (else the first queries run on fewer)
            self._wait(
                lambda: (
                    self._log("connect").count("Registering block manager 127.0.0.1")
                    >= self.workers
                ),
                "executors",
                deadline,
            )
        except BaseException:
            self.stop()
            raise
        return self.remote

    def _wait(self, ready, what: str, deadline: float) -> None:
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SparkClusterError(
                        f"spark {name} exited with {proc.returncode} while waiting for {what}\n"
                        + self.logs()
                    )
            if time.monotonic() > deadline:
                raise SparkClusterError(f"spark {what} not ready in time\n" + self.logs())
            time.sleep(0.25)

    def _log(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def logs(self, lines: int = 30) -> str:
        """The last lines of every process's log."""
        out = []
        for name in self.procs:
            tail = self._log(name).splitlines()[-lines:]
            out.append(f"--- {self.workdir / (name + '.log')} (last {len(tail)} lines)")
            out += tail
        return "\n".join(out)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the connect server, then the workers, then the master (SIGTERM, then SIGKILL)."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                with_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with_group(proc, signal.SIGKILL)
                proc.wait()
            # a script's child may outlive it in the group (spark-class execs java, nohup-free)
            with_group(proc, signal.SIGKILL)

    def __enter__(self) -> SparkCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def with_group(proc: subprocess.Popen, sig: int) -> None:
    """Send sig to the process group the child leads (its own, from start_new_session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
