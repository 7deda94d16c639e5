"""A real MLServer for the tests: its own virtual environment, built once per machine and
reused, and a server process with the bundled detector on free loopback ports.

MLServer is kept out of oilspill's environment: it brings about 40 packages (FastAPI,
uvicorn, gRPC, OpenTelemetry, pandas, gevent) with tight pins of their own (fastapi<0.116,
protobuf<7, pydantic<3, Python<3.13), and the model needs only the detector's NumPy, SciPy
and Pillow beside it, which this environment proves: `ml_stub` is reached through
PYTHONPATH, as the compose file's image does, not installed.

The environment is `$OILSPILL_MLSERVER_VENV`, else `~/.cache/oilspill-test/mlserver-venv`.
It is built under a file lock (parallel runs wait for one build), and a marker written last
names the requirements it holds: a half-built or outdated one is built again. An install
that fails fails the tests that need it, with pip's output.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ml_stub.oip import MODEL_NAME

from .procs import clean_env, free_port

MLSERVER_VERSION = "1.7.1"
# The detector's own requirements, as in pyproject.toml.
REQUIREMENTS = (f"mlserver=={MLSERVER_VERSION}", "numpy>=1.24", "scipy>=1.10", "Pillow>=10.0")
REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "mlserver"
PIXELS_MODEL = f"{MODEL_NAME}-pixels"
PIXEL_TENSORS = [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1]},
                 {"name": "mask", "datatype": "UINT8", "shape": [-1, -1, -1]}]
START_TIMEOUT_S = 180.0


def venv_path() -> Path:
    configured = os.environ.get("OILSPILL_MLSERVER_VENV")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "oilspill-test" / "mlserver-venv"


def mlserver_venv() -> Path:
    """MLServer's virtual environment, built if missing or outdated; returns its folder."""
    root = venv_path()
    marker = root / "oilspill-requirements.txt"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on a crash
        if (marker.is_file() and marker.read_text() == wanted
                and (root / "bin" / "mlserver").is_file()):
            return root
        shutil.rmtree(root, ignore_errors=True)
        for step in ([sys.executable, "-m", "venv", str(root)],
                     [str(root / "bin" / "python"), "-m", "pip", "install", "--quiet",
                      "--disable-pip-version-check", *REQUIREMENTS]):
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            assert done.returncode == 0, (
                f"building MLServer's environment failed: {' '.join(step)}\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        marker.write_text(wanted)
    return root


@dataclass(frozen=True)
class MLServer:
    """A running MLServer: base is its REST address, model_url the detector's as
    deploy/mlserver declares it (PNGs in and out), pixels_url the same runtime declared with
    UINT8 pixels in and out (PIXELS_MODEL)."""

    base: str
    grpc_port: int
    metrics_port: int
    log: Path

    @property
    def model_url(self) -> str:
        return f"{self.base}/v2/models/{MODEL_NAME}"

    @property
    def pixels_url(self) -> str:
        return f"{self.base}/v2/models/{PIXELS_MODEL}"


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_mlserver(workdir: Path) -> Iterator[MLServer]:
    """`mlserver start` on deploy/mlserver's settings, with its ports moved to free loopback
    ports; yields once the model is ready, stops the server after."""
    venv = mlserver_venv()
    models = workdir / MODEL_NAME  # named as the model: MLServer warns otherwise
    models.mkdir(parents=True)
    shutil.copy(DEPLOY / "model-settings.json", models / "model-settings.json")
    # The same runtime declared with pixels both ways, found by MLServer in a subfolder.
    pixels = json.loads((DEPLOY / "model-settings.json").read_text())
    pixels.update(name=PIXELS_MODEL, inputs=PIXEL_TENSORS[:1], outputs=PIXEL_TENSORS[1:])
    (models / PIXELS_MODEL).mkdir()
    (models / PIXELS_MODEL / "model-settings.json").write_text(json.dumps(pixels))
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = json.loads((DEPLOY / "settings.json").read_text())
    settings.update(host="127.0.0.1", http_port=http_port, grpc_port=grpc_port,
                    metrics_port=metrics_port)
    (models / "settings.json").write_text(json.dumps(settings))
    env = {k: v for k, v in clean_env(PYTHONPATH=str(REPO)).items()
           if not k.startswith("MLSERVER_")}  # settings come from the files alone
    log = workdir / "mlserver.log"
    server = MLServer(f"http://127.0.0.1:{http_port}", grpc_port, metrics_port, log)
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(models)],
                                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                for url in (server.model_url, server.pixels_url):
                    with urllib.request.urlopen(f"{url}/ready", timeout=2):
                        pass
                break
            except OSError:
                assert proc.poll() is None, f"MLServer exited:\n{_tail(log)}"
                assert time.monotonic() < deadline, (
                    f"MLServer's model not ready in {START_TIMEOUT_S} s:\n{_tail(log)}")
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session", name="mlserver")
def mlserver_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    """The fixture `mlserver`: a running MLServer serving the detector, shared by the
    session's tests; its `model_url` is what ML_SERVICE_URL takes. conftest.py imports it
    once for the whole suite (a module importing it would get a server of its own)."""
    with running_mlserver(tmp_path_factory.mktemp("mlserver")) as server:
        yield server
