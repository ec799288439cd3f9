"""llama.cpp's command-line tools as `bake` runs them: where they are, `llama-quantize` (a quantized
base to F32), `llama-finetune` (with its progress read from its output) and `llama-server` (on a
free loopback port, for as long as a `with` block lasts).

The tools' folder is `--llama-bin`, else `ROLE_INJECTOR_LLAMA_BIN`, else `$ROLE_INJECTOR_TOOLS/bin`
(default `~/.cache/role-injector/tools/bin`), the link `scripts/engine-toolchain.sh` keeps to the
tools it built. The shared libraries they need are beside them (`LD_LIBRARY_PATH`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from role_injector.errors import ConfigError, ToolFailed

TOOLS = ("llama-server", "llama-finetune", "llama-quantize")
DEFAULT_TOOLS_DIR = "~/.cache/role-injector/tools"
PR_SET_PDEATHSIG = 1  # prctl(2)
LOG_LINES = 12  # of a failed tool's output, in its error
SERVER_START_SECONDS = 120.0
# llama-finetune's progress (ggml_opt_epoch_callback_progress_bar), one line per step, ended by \r:
# "train: [███▏    ] data=0000002/0000005 loss=1.10513±0.30065 acc=80.47±1.75% t=00:00:17 ETA=00:00:26"
PROGRESS = re.compile(r"(?P<phase>train|val):\s*\[[^\]]*\]\s*data=(?P<done>\d+)/(?P<total>\d+)\s+"
                      r"loss=(?P<loss>[0-9.]+)")
EPOCH = re.compile(r"\bepoch (?P<epoch>\d+) lr=")


def tools_folder(option: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The folder of llama.cpp's tools, checked: each of `TOOLS` is there and executable."""
    env = os.environ if env is None else env
    folder = Path(option or env.get("ROLE_INJECTOR_LLAMA_BIN")
                  or Path(env.get("ROLE_INJECTOR_TOOLS") or DEFAULT_TOOLS_DIR) / "bin").expanduser()
    missing = [tool for tool in TOOLS if not os.access(folder / tool, os.X_OK)]
    if missing:
        raise ConfigError(f"llama.cpp's {', '.join(missing)} not found in {folder}: run scripts/engine-toolchain.sh "
                          "bin (it builds them), or name their folder with --llama-bin or ROLE_INJECTOR_LLAMA_BIN",
                          details={"folder": str(folder)})
    return folder


def _environment(folder: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_LIBRARY_PATH": str(folder)}


def _die_with_parent() -> None:
    """In the child before exec (Linux): killed when the command that started it dies, however it dies,
    so no trainer or server is left running on its own."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _failed(tool: str, code: int, lines: Sequence[str], log: Path | None = None) -> ToolFailed:
    tail = "\n".join(line for line in lines if line.strip())
    where = f" (its log: {log})" if log else ""
    return ToolFailed(f"{tool} failed with exit code {code}{where}:\n{tail}", details={"tool": tool, "exit_code": code})


def dequantize(folder: Path, source: Path, target: Path) -> None:
    """`llama-quantize --allow-requantize source target F32`: every weight as F32, which is all that
    llama-finetune trains (about 1 s and 4 bytes per weight for SmolLM2-135M: 540 MB)."""
    result = subprocess.run([str(folder / "llama-quantize"), "--allow-requantize", str(source), str(target), "F32"],
                            capture_output=True, text=True, errors="replace", env=_environment(folder),
                            timeout=3600, check=False)
    if result.returncode != 0:
        raise _failed("llama-quantize", result.returncode, (result.stdout + result.stderr).splitlines()[-LOG_LINES:])


@dataclass
class TrainingProgress:
    """What llama-finetune reported last: the step of all epochs, and its loss (the mean over the
    epoch's steps so far, scaled as asked); `epoch_losses` the last of each epoch, i.e. each epoch's
    mean loss."""

    epoch: int = 0
    epochs: int = 1
    step: int = 0  # of this epoch
    steps: int = 0  # per epoch
    loss: float | None = None
    epoch_losses: list[float] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.epoch * self.steps + self.step

    @property
    def total(self) -> int:
        return self.epochs * self.steps


# Full fine-tuning with one 256-token window a step: on SmolLM2-135M, 5e-6 kept the most of the role
# and of the model; 3e-5 made the teacher's held-out answers less likely than the untrained base did
# (docs/bake.md has the sweep).
DEFAULT_LEARNING_RATE = 5e-6


@dataclass(frozen=True)
class TrainingSettings:
    context: int = 256  # tokens per training window (and batch); llama-finetune trains with n_ubatch = n_ctx
    epochs: int = 1
    learning_rate: float = DEFAULT_LEARNING_RATE
    threads: int = 2


def finetune(folder: Path, model: Path, windows: Path, output: Path, settings: TrainingSettings, log: Path,
             on_progress: Callable[[TrainingProgress], None] | None = None, *,
             loss_scale: float = 1.0) -> TrainingProgress:
    """Full fine-tuning of an F32 `model` with llama-finetune on a file of `training_windows` of
    `context` tokens, whose labels say which positions are trained; its output goes to `log`. No
    validation split (the dataset's held-out file is for `bake eval`). The reported losses are
    llama-finetune's times `loss_scale`. llama-finetune keeps no checkpoint: it writes `output` at
    the end or not at all."""
    command = [str(folder / "llama-finetune"), "--file", str(windows), "--model", str(model), "-o", str(output),
               "-c", str(settings.context), "-b", str(settings.context), "-ub", str(settings.context),
               "-epochs", str(settings.epochs), "-lr", f"{settings.learning_rate:g}", "-val-split", "0",
               "-t", str(settings.threads)]
    progress = TrainingProgress(epochs=settings.epochs)
    recent: deque[str] = deque(maxlen=LOG_LINES)
    with log.open("w", encoding="utf-8", buffering=1) as log_file, subprocess.Popen(  # line by line: tail -f
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_environment(folder),
            preexec_fn=_die_with_parent) as process:
        assert process.stdout is not None
        try:
            for line in _lines(process.stdout):
                log_file.write(line + "\n")
                recent.append(line)
                if found := EPOCH.search(line):
                    progress.epoch = int(found["epoch"])
                elif (found := PROGRESS.search(line)) and found["phase"] == "train":
                    progress.step, progress.steps = int(found["done"]), int(found["total"])
                    progress.loss = float(found["loss"]) * loss_scale
                    del progress.epoch_losses[progress.epoch:]
                    progress.epoch_losses.append(progress.loss)
                    if on_progress:
                        on_progress(progress)
        except BaseException:
            process.kill()
            raise
        code = process.wait()
    if code != 0:
        raise _failed("llama-finetune", code, list(recent))
    return progress


def _lines(stream: object) -> Iterator[str]:
    """Lines of a tool's output, split at \\n and at the \\r that redraws a progress bar."""
    pending = b""
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        for line in lines:
            if line.strip():
                yield line.decode("utf-8", "replace")
        pending = pending[-65536:]  # a line without an end is not kept whole
    if pending.strip():
        yield pending.decode("utf-8", "replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def llama_server(folder: Path, model: Path, log: Path, *, context: int = 4096, threads: int = 2,
                 extra: Sequence[str] = ()) -> Iterator[str]:
    """`llama-server` with `model` on a free loopback port, one slot; yields its URL once it answers
    `/health`, and stops it when the block ends."""
    port = free_port()
    command = [str(folder / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(context), "-np", "1", "-t", str(threads), "--no-webui", *extra]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=_environment(folder),
                                   preexec_fn=_die_with_parent)
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import urllib3  # here: the CLI reads this module's defaults, and `serve` must import ssl only after gevent

    http = urllib3.PoolManager(retries=False)
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            lines = log.read_text("utf-8", "replace").splitlines()[-LOG_LINES:]
            raise _failed("llama-server", process.returncode, lines, log)
        try:
            if http.request("GET", url + "/health", timeout=2.0).status == 200:
                return
        except (urllib3.exceptions.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise ToolFailed(f"llama-server did not become healthy within {SERVER_START_SECONDS:g} s (its log: {log})",
                     details={"tool": "llama-server"})
