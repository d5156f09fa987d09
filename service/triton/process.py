"""The bundled tritonserver (from the nvidia-pytriton wheel) as a child process of the service."""

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

from service import metrics
from service.triton import contract

log = logging.getLogger(__name__)

# An installed wheel carries the repository inside the package (setup.py copies it there); a
# checkout (and an editable install) uses the top-level model_repository/.
PACKAGED_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
CHECKOUT_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


ADMIN_PROTOCOLS = "shared-memory,model-config,model-repository,statistics,trace,logging"
ADMIN_HEADER = "neardup-triton-admin"


def default_model_repository() -> Path:
    """The model repository shipped with this installation of the service."""
    return PACKAGED_REPOSITORY if PACKAGED_REPOSITORY.is_dir() else CHECKOUT_REPOSITORY


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Asks the kernel to SIGTERM the process when the service dies, even by SIGKILL (PR_SET_PDEATHSIG),
# then becomes tritonserver (same pid). Not Popen's preexec_fn: to run one, Python forks rather than
# vforks, and gRPC's fork handlers in the service can abort the child before it execs
# (grpc/grpc#43055: "Epoll1Poller ... epoll_wait error: Bad file descriptor").
DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


# What the CPU build of tritonserver prints at every start on a host without a GPU: expected there,
# so the relay drops it (a GPU host has neither line).
CPU_HOST_NOISE = (b"CudaDriverHelper has not been initialized", b"Failed to initialize NVML")


def relay_output(stream, to=None) -> None:
    """Copies tritonserver's output line by line to the service's stderr (or `to`), less CPU_HOST_NOISE,
    until it closes."""
    to = to or sys.stderr.buffer
    with stream:
        for line in stream:
            if not any(noise in line for noise in CPU_HOST_NOISE):
                to.write(line)
                to.flush()


def kill_process_group(server: subprocess.Popen) -> None:
    """SIGKILLs whatever is left of a spawned server's process group. Triton's python stubs (one
    process per model instance, each holding the model in memory) do not always die with a server
    killed abruptly: they would run on as orphans, and the restarted server starts new ones."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)


class BundledTriton:
    """Starts, watches and stops the tritonserver of the nvidia-pytriton wheel on 127.0.0.1.

    The wheel ships the binary, its libraries and one python-backend stub per Python version;
    Triton expects the stub beside the backend, so a private backend folder is assembled in a
    temporary directory. The model's Python code runs in this interpreter's environment.
    If the server dies it is started again on the same ports after `restart_delay_s`.
    """

    def __init__(self, models: list[str], repository: Path, restart_delay_s: float = 2.0, model_file: str = ""):
        import pytriton

        if not (repository / models[0] / "config.pbtxt").exists():
            raise SystemExit(
                f"no Triton model {models[0]!r} in {repository}: pass --model-repository "
                "(the model_repository/ folder of the neardup source)"
            )
        self.dist = Path(pytriton.__file__).parent / "tritonserver"
        self.libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
        self.models = models
        self.repository = repository
        self.model_file = model_file  # served by the contract.FILE_MODEL entry
        self.restart_delay_s = restart_delay_s
        self.grpc_port = free_port()
        self.metrics_port = free_port()  # Triton's own Prometheus metrics, on loopback
        self.workdir = Path(tempfile.mkdtemp(prefix="neardup-triton-"))
        # Sent by nobody: the admin protocols it guards are closed to every client, ours included.
        self.admin_secret = secrets.token_urlsafe(24)
        self.process: subprocess.Popen | None = None
        self._watch: asyncio.Task | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _backend_directory(self) -> Path:
        python_backend = self.workdir / "backends" / "python"
        python_backend.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            target = python_backend / name
            if not target.exists():
                target.symlink_to(self.dist / "backends" / "python" / name)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise RuntimeError(f"nvidia-pytriton ships no python backend stub for Python {version}")
        copied = python_backend / "triton_python_backend_stub"
        if not copied.exists():  # a restart reuses it: a stub of the killed server may still be running it
            shutil.copy(stub, copied)
        return python_backend.parent

    def _served_repository(self) -> Path:
        """A private repository holding only the served models (links to the real ones; the file entry's
        configuration names the --model-file): with model control off, Triton loads all of it and
        nothing else, ever."""
        served = self.workdir / "models"
        served.mkdir(parents=True, exist_ok=True)
        for model in self.models:
            source, entry = self.repository.resolve() / model, served / model
            if entry.exists():
                continue
            if model != contract.FILE_MODEL:
                entry.symlink_to(source, target_is_directory=True)
                continue
            entry.mkdir()
            (entry / "1").symlink_to(source / "1", target_is_directory=True)
            config = (source / "config.pbtxt").read_text()
            named = f'key: "model_file", value: {{ string_value: {json.dumps(str(Path(self.model_file).resolve()))} }}'
            (entry / "config.pbtxt").write_text(config.replace('key: "model_file", value: { string_value: "" }', named))
        return served

    def command(self) -> list[str]:
        """Locked down: gRPC and metrics on loopback only, no HTTP, no model loading or unloading, and the
        admin protocols (shared memory, repository, configuration, statistics, trace, logging)
        refused to any client without a header that only this object knows."""
        return [
            str(self.dist / "bin" / "tritonserver"),
            f"--model-repository={self._served_repository()}",
            f"--backend-directory={self._backend_directory()}",
            "--model-control-mode=none",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--grpc-restricted-protocol={ADMIN_PROTOCOLS}:{ADMIN_HEADER}={self.admin_secret}",
            "--allow-http=false",
            "--allow-metrics=true",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--log-info=false",
        ]

    def environment(self) -> dict[str, str]:
        """The stub embeds this Python: it finds the environment through the `python3` on PATH."""
        env = dict(os.environ)
        libraries = [str(self.libs), sysconfig.get_config_var("LIBDIR")]
        if env.get("LD_LIBRARY_PATH"):
            libraries.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def spawn(self, output=None) -> subprocess.Popen:
        """Starts the server process, unwatched (tools and tests that stop and restart it themselves),
        as the leader of its own process group, which its python stubs inherit: see kill_process_group."""
        return subprocess.Popen(
            [sys.executable, "-c", DIE_WITH_PARENT, *self.command()],
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if output == subprocess.PIPE else output,
            start_new_session=True,
        )

    def start(self) -> None:
        """Starts the server and restarts it whenever it dies, until stop(); needs a running event loop."""
        log.info(
            "starting bundled tritonserver on %s (models: %s; its metrics on http://127.0.0.1:%d/metrics)",
            self.url,
            ", ".join(self.models),
            self.metrics_port,
        )
        self.process = self.spawn(subprocess.PIPE)
        threading.Thread(target=relay_output, args=(self.process.stdout,), name="triton-output", daemon=True).start()
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._restart_when_dead())

    def restart(self, why: str) -> None:
        """Kills the server (the watcher starts it again): for a model that cannot run in it any more."""
        log.error("restarting tritonserver: %s", why)
        if self.process is not None:
            kill_process_group(self.process)

    async def _restart_when_dead(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.2)
            if self.process is not None and self.process.poll() is not None and not self._stopping:
                kill_process_group(self.process)
                log.error(
                    "tritonserver exited with code %s; starting it again in %.1f s",
                    self.process.returncode,
                    self.restart_delay_s,
                )
                await asyncio.sleep(self.restart_delay_s)
                if not self._stopping:
                    metrics.TRITON_RESTARTS.inc()
                    self.start()

    async def stop(self, timeout_s: float = 15.0) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.process is not None:
            if self.process.poll() is None:
                log.info("stopping tritonserver (pid %d)", self.process.pid)
                self.process.terminate()
                try:
                    await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout_s)
                except TimeoutError:
                    log.warning("tritonserver did not stop in %.0f s; killing it", timeout_s)
                    self.process.kill()
                    await asyncio.to_thread(self.process.wait)
            kill_process_group(self.process)
        self.stop_files()

    def stop_files(self) -> None:
        """Removes the private backend folder (after the server has stopped)."""
        shutil.rmtree(self.workdir, ignore_errors=True)
