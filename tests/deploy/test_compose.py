"""deploy/: the compose files validated by a real validator, their promises checked, their commands run here.

No container engine runs on these machines and no base image can be pulled, so nothing here builds an image or
starts a container. Instead: `docker-compose config -q` (Debian's docker-compose, which needs no daemon; the test
command installs it when it runs as root) validates both files; the Dockerfiles' steps are checked to be the
README's own commands; and the robopt commands of the compose files and images (the service, its reload variant,
the health check, the page's dev server) run outside a container, as written, with only the bind address, port
and data directory changed. PostgreSQL's and Ray's commands are checked for their binaries only where installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = {"dev": DEPLOY / "docker-compose.dev.yml", "prod": DEPLOY / "docker-compose.prod.yml"}
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "cuda": DEPLOY / "Dockerfile.cuda"}
API_KEY = "test-key-not-a-secret"
COMPOSE_ENV = {"ROBOPT_API_KEY": API_KEY, "POSTGRES_PASSWORD": "test-password-not-a-secret"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$", re.IGNORECASE)
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
START_TIMEOUT_S = 90.0


def compose(name: str) -> dict:
    return yaml.safe_load(COMPOSE_FILES[name].read_text())


def services(name: str) -> dict[str, dict]:
    return compose(name)["services"]


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` over `env` (`$$` is a literal `$`)."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == ":?":
            raise KeyError(f"{name}: {rest}")
        return rest if kind == ":-" else ""

    return VARIABLE.sub(one, value).replace("$$", "$")


def service_env(name: str, service: str, env: dict[str, str]) -> dict[str, str]:
    return {
        key: interpolate(str(value), env) for key, value in services(name)[service]["environment"].items()
    }


def docker_compose() -> list[str] | None:
    """The compose CLI that can validate without a daemon: Debian's docker-compose, or the docker compose plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return None


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def exec_form(arguments: str) -> list[str]:
    return yaml.safe_load(arguments)


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_compose_file_is_valid(name: str, tmp_path: Path) -> None:
    tool = docker_compose()
    if tool is None:
        message = (
            "no compose validator: `apt-get install docker-compose` (python3 run_tests.py does, as root)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env_file = tmp_path / ".env.production"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in COMPOSE_ENV.items()))
    clean = {key: value for key, value in os.environ.items() if key not in COMPOSE_ENV}

    def config(env_path: Path) -> subprocess.CompletedProcess[str]:
        command = [*tool, "--env-file", str(env_path), "-f", str(COMPOSE_FILES[name]), "config"]
        return subprocess.run(command, capture_output=True, text=True, env=clean)

    result = config(env_file)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["services"]["robopt"]["environment"]["ROBOPT_API_KEY"] == API_KEY
    # Without the secrets the file refuses to resolve, naming what is missing.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = config(empty)
    assert refused.returncode != 0 and "ROBOPT_API_KEY" in refused.stderr + refused.stdout


# --- what the files promise -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_every_long_running_service_has_a_health_check(name: str) -> None:
    defined = services(name)
    one_shot = {
        dependency
        for service in defined.values()
        for dependency, rule in (service.get("depends_on") or {}).items()
        if rule.get("condition") == "service_completed_successfully"
    }
    for service, spec in defined.items():
        if service not in one_shot:
            assert spec.get("healthcheck", {}).get("test"), f"{name}: {service} has no health check"


@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_no_literal_secrets(name: str) -> None:
    for service, spec in services(name).items():
        for key, value in (spec.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(
                    r"\$\{\w+:\?[^}]+\}", str(value)
                ), f"{service}.{key} is not a required variable"
    text = COMPOSE_FILES[name].read_text()
    assert "postgresql://" not in re.sub(
        r"#.*", "", text
    ), "a database URL (with its password) outside a comment"
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in dockerignore and ".env.*" in dockerignore, "an .env file could be copied into an image"


@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_data_lives_in_volumes(name: str) -> None:
    spec = compose(name)
    named = set(spec["volumes"])
    robopt, postgres = spec["services"]["robopt"], spec["services"]["postgres"]
    assert robopt["environment"]["ROBOPT_DATA_DIR"] == "/data"
    assert any(v.split(":")[0] in named and v.split(":")[1] == "/data" for v in robopt["volumes"])
    assert any(
        v.split(":")[0] in named and v.split(":")[1] == "/var/lib/postgresql/data"
        for v in postgres["volumes"]
    )
    for dockerfile in DOCKERFILES.values():
        instructions = dict(dockerfile_instructions(dockerfile))
        assert exec_form(instructions["VOLUME"]) == ["/data"]
        assert "ROBOPT_DATA_DIR=/data" in instructions["ENV"]


@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_robopt_uses_only_settings_that_exist(name: str) -> None:
    from server.settings import Settings

    known = {f"ROBOPT_{field.upper()}" for field in Settings.model_fields}
    unknown = set(services(name)["robopt"]["environment"]) - known
    assert not unknown, f"settings robopt does not read: {sorted(unknown)}"


def test_every_compose_variable_is_documented_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    for path in COMPOSE_FILES.values():
        for variable in set(m.group(1) for m in VARIABLE.finditer(path.read_text())):
            assert f"{variable}=" in example, f"{variable} ({path.name}) is not in .env.example"


def test_ports_are_bound_as_documented() -> None:
    prod, dev = services("prod"), services("dev")
    assert prod["robopt"]["ports"] == ["${PUBLISH_HOST:-127.0.0.1}:${PUBLISH_PORT:-8000}:8000"]
    assert "ports" not in prod["postgres"], "prod PostgreSQL must not be published"
    assert prod["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]
    for service, spec in dev.items():
        for port in spec.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"dev {service} publishes beyond the host: {port}"
    readme = (ROOT / "README.md").read_text()
    for published in ("127.0.0.1:8000", "127.0.0.1:3000", "127.0.0.1:5432", "127.0.0.1:8265", "PUBLISH_HOST"):
        assert published in readme, f"{published} is not documented in the README"


def test_prod_service_serves_the_built_page() -> None:
    robopt = services("prod")["robopt"]
    assert "ROBOPT_FRONTEND_DIR" not in robopt["environment"], "the image's frontend/dist is the page served"
    for dockerfile in DOCKERFILES.values():
        copies = [args for kind, args in dockerfile_instructions(dockerfile) if kind == "COPY"]
        assert any(
            a.startswith("--from=page") and a.endswith("/src/frontend/dist frontend/dist") for a in copies
        )
    from server.settings import Settings

    default = Settings.model_fields["frontend_dir"].default
    assert default.relative_to(default.parents[1]) == Path("frontend/dist")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_the_readme_way(kind: str) -> None:
    steps = dockerfile_instructions(DOCKERFILES[kind])
    runs = [args for instruction, args in steps if instruction == "RUN"]
    # The page: the npm commands of _bootstrap.py.
    bootstrap = (ROOT / "_bootstrap.py").read_text()
    assert (
        '"ci", "--no-audit", "--no-fund", "--loglevel=error"' in bootstrap
        and '"run", "build", "--silent"' in bootstrap
    )
    assert "npm ci --no-audit --no-fund --loglevel=error" in runs and "npm run build --silent" in runs
    # The service: the torch pin of pyproject.toml (CPU or CUDA index), then the README's setup command.
    pin = next(
        d
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if d.startswith("torch==")
    )
    torch = next(r for r in runs if "pip install torch" in r)
    assert f".venv/bin/pip install {pin} --index-url " in torch
    index = torch.rsplit("--index-url ", 1)[1]
    if kind == "cpu":
        assert index == "https://download.pytorch.org/whl/cpu"
    else:
        arg = next(a for i, a in steps if i == "ARG" and a.startswith("TORCH_INDEX="))
        assert index == "${TORCH_INDEX}" and re.fullmatch(
            r"TORCH_INDEX=https://download\.pytorch\.org/whl/cu\d+", arg
        )
        assert next(a for i, a in steps if i == "ARG").startswith(
            "CUDA_IMAGE=nvidia/cuda:"
        ) and "-runtime-" in arg + next(a for i, a in steps if i == "ARG")
    readme = (ROOT / "README.md").read_text()
    assert "python3 run_robopt.py" in readme and f".venv/bin/pip install {pin} --index-url" in readme
    assert any(re.fullmatch(r"python3 run_robopt\.py( \S+)*", r) for r in runs)
    user = [args for instruction, args in steps if instruction == "USER"]
    assert user and user[-1] not in ("root", "0")
    instructions = dict(steps)
    assert exec_form(instructions["CMD"]) == services("prod")["robopt"]["command"]
    health = instructions["HEALTHCHECK"]
    assert exec_form(health.split("CMD ", 1)[1]) == services("prod")["robopt"]["healthcheck"]["test"][1:]
    assert (
        services("prod")["robopt"]["healthcheck"]["test"] == services("dev")["robopt"]["healthcheck"]["test"]
    )


def test_binding_beyond_loopback_needs_the_key() -> None:
    from server.errors import InsecureBindError
    from server.main import check_bind
    from server.settings import Settings

    env = service_env("prod", "robopt", COMPOSE_ENV)
    host = services("prod")["robopt"]["command"][3]
    check_bind(host, Settings(api_key=env["ROBOPT_API_KEY"]))
    with pytest.raises(InsecureBindError):
        check_bind(host, Settings(api_key=None))


# --- the commands, run outside a container ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_venv_path(env: dict[str, str]) -> dict[str, str]:
    """PATH as in the images (`/opt/robopt/.venv/bin` first): this interpreter's bin folder first."""
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def replace_option(command: list[str], option: str, value: str) -> list[str]:
    changed = list(command)
    changed[changed.index(option) + 1] = value
    return changed


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts, each in its own session; all of each group is stopped afterwards."""
    started: list[subprocess.Popen] = []
    yield started
    for process in reversed(started):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def start(
    command: list[str], env: dict[str, str], cwd: Path, log: Path, into: list[subprocess.Popen]
) -> subprocess.Popen:
    handle = log.open("wb")
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    into.append(process)
    return process


def wait_healthy(check: list[str], env: dict[str, str], process: subprocess.Popen, log: Path) -> None:
    """Run the health check command until it passes (the container's health check, run here)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if subprocess.run(check, cwd=ROOT, env=env, capture_output=True).returncode == 0:
            return
        if process.poll() is not None:
            pytest.fail(f"{shlex.join(process.args)} exited {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"not healthy after {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def get(url: str, key: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def robopt_environment(name: str, tmp_path: Path) -> tuple[dict[str, str], int]:
    """The compose file's environment for robopt, with a free port and a temporary data directory."""
    port = free_port()
    env = service_env(name, "robopt", COMPOSE_ENV)
    env |= {"ROBOPT_DATA_DIR": str(tmp_path / "data"), "ROBOPT_PORT": str(port)}
    base = {k: v for k, v in os.environ.items() if not k.startswith("ROBOPT_")}
    return with_venv_path({**base, **env, "PYTHONDONTWRITEBYTECODE": "1"}), port


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(COMPOSE_FILES))
def test_robopt_command_serves_and_passes_its_health_check(name: str, tmp_path: Path, running: list) -> None:
    spec = services(name)["robopt"]
    env, port = robopt_environment(name, tmp_path)
    command = replace_option(spec["command"], "--host", "127.0.0.1")
    if "--port" in command:
        command = replace_option(command, "--port", str(port))
    log = tmp_path / "service.log"
    process = start(command, env, ROOT, log, running)
    check = spec["healthcheck"]["test"][1:]
    wait_healthy(check, env, process, log)
    base = f"http://127.0.0.1:{port}"
    assert get(f"{base}/api/v1/models")[0] == 401, "the compose file's key is not enforced"
    assert get(f"{base}/api/v1/models", API_KEY)[0] == 200
    page_unchecked = False
    if name == "prod":
        from server.settings import Settings

        if (Settings().frontend_dir / "index.html").is_file():
            status, kind, body = get(f"{base}/")
            assert status == 200 and "text/html" in kind and "<div id=" in body
        else:
            page_unchecked = True
    # The health check fails once the service is gone.
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    assert subprocess.run(check, cwd=ROOT, env=env, capture_output=True).returncode == 1
    if page_unchecked:
        pytest.skip("the page is not built here (npm run build in frontend/): / was not checked")


@pytest.mark.integration
def test_page_dev_server_command_proxies_to_the_service(tmp_path: Path, running: list) -> None:
    frontend = services("dev")["frontend"]
    if shutil.which("npm") is None or not (ROOT / "frontend" / "node_modules").is_dir():
        message = "npm or frontend/node_modules is missing: the page's dev server command did not run"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 3000)) == 0:
            pytest.skip("port 3000 is taken here: the page's dev server (strictPort 3000) did not run")
    env, port = robopt_environment("prod", tmp_path)
    service = start(
        replace_option(services("prod")["robopt"]["command"], "--host", "127.0.0.1"),
        env,
        ROOT,
        tmp_path / "service.log",
        running,
    )
    wait_healthy(
        services("prod")["robopt"]["healthcheck"]["test"][1:], env, service, tmp_path / "service.log"
    )
    page_env = {**os.environ, **frontend["environment"], "ROBOPT_SERVICE_URL": f"http://127.0.0.1:{port}"}
    page = start(
        replace_option(frontend["command"], "--host", "127.0.0.1"),
        page_env,
        ROOT / "frontend",
        tmp_path / "page.log",
        running,
    )
    wait_healthy(frontend["healthcheck"]["test"][1:], page_env, page, tmp_path / "page.log")
    status, _, body = get("http://127.0.0.1:3000/api/v1/health")
    assert status == 200 and '"status":"ok"' in body.replace(" ", "")
    # `npm ci` (the frontend-deps service) is not run here: it would replace this checkout's node_modules.
    assert services("dev")["frontend-deps"]["command"] == [
        "npm",
        "ci",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ]


@pytest.mark.parametrize(
    "name,service", [("dev", "postgres"), ("prod", "postgres"), ("prod", "ray-head"), ("prod", "ray-worker")]
)
def test_other_services_commands_exist_where_installed(name: str, service: str) -> None:
    spec = services(name)[service]
    test = spec["healthcheck"]["test"]
    words = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
    binaries = {words[0], *(spec.get("command") or [words[0]])[:1]}
    missing = [b for b in sorted(binaries) if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed here: {service}'s commands were not run (its image has them)"
        )
    if test[0] == "CMD-SHELL":
        # Run as written (no server here): pg_isready answers 0-2 (accepting, rejecting, no response); 3 is a
        # bad invocation.
        env = {**os.environ, **service_env(name, service, COMPOSE_ENV)}
        result = subprocess.run(
            ["sh", "-c", interpolate(test[1], {})], env=env, capture_output=True, text=True
        )
        assert result.returncode in (0, 1, 2), result.stderr
