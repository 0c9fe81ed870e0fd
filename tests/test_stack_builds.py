"""Real builds of generated Dockerfiles: `hgrun deploy` with no Dockerfile, `hgrun run`, and a
second deploy after a source-only change that reuses the dependency layer.

Against the real dockerd, on the local toolchain images of scripts/images (Debian's packages
through debootstrap; no registry is reachable), named in build.base and build.builder. The apps
have no third-party dependencies, so the install steps (pip, npm ci, go mod download, bundle
install, composer install) run, and succeed, with the app's network: none.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest
from conftest import stack_image_cached
from support.apps import BUSYBOX_IMAGE
from support.cli import Cli

pytestmark = pytest.mark.docker


@dataclass(frozen=True)
class StackApp:
    """A small app: its files, the images of its build, the step that installs its
    dependencies, what `hgrun run hello` prints, and the source edit of the second deploy."""

    stack: str
    marker: str
    files: dict[str, str]
    images: dict[str, str]  # build.base / build.builder -> an image name or a stack's image
    install: str
    says: str
    edit: tuple[str, str, str]  # (file, old, new)
    one_stage: bool = True
    needs: tuple[str, ...] = field(default=())


APPS = {
    "python": StackApp(
        stack="python",
        marker="requirements.txt",
        files={
            "requirements.txt": "# no third-party packages: the install step runs offline\n",
            "app.py": "import sys\nprint('hello from python', sys.version_info[0])\n",
            "Procfile": "hello: python app.py\n",
        },
        images={"base": "python"},
        install="RUN pip install -r requirements.txt",
        says="hello from python 3",
        edit=("app.py", "hello from", "hi again from"),
    ),
    "node": StackApp(
        stack="node",
        marker="package.json",
        files={
            "package.json": '{"name": "app", "version": "1.0.0", "private": true}\n',
            "package-lock.json": (
                '{"name": "app", "version": "1.0.0", "lockfileVersion": 3, "requires": true,\n'
                ' "packages": {"": {"name": "app", "version": "1.0.0"}}}\n'
            ),
            "app.js": "console.log('hello from node', process.versions.node.split('.')[0] > 0)\n",
            "Procfile": "hello: node app.js\n",
        },
        images={"base": "node"},
        install="RUN npm ci --omit=dev --no-audit --no-fund",
        says="hello from node true",
        edit=("app.js", "hello from", "hi again from"),
    ),
    "go": StackApp(
        stack="go",
        marker="go.mod",
        files={
            "go.mod": "module example.com/hello\n\ngo 1.19\n",
            "main.go": (
                'package main\n\nimport "fmt"\n\n'
                'func main() { fmt.Println("hello from go", 6*7) }\n'
            ),
            "Procfile": "hello: hello\n",
        },
        # The run image is FROM scratch with a static busybox: it holds the binary, no Go.
        images={"builder": "go", "base": BUSYBOX_IMAGE},
        install="RUN go mod download",
        says="hello from go 42",
        edit=("main.go", "hello from", "hi again from"),
        one_stage=False,
    ),
    # A module dependency with no registry: vendored (`go mod vendor`), so nothing is fetched.
    "go-vendored": StackApp(
        stack="go",
        marker="go.mod",
        files={
            "go.mod": "module example.com/hello\n\ngo 1.19\n\nrequire example.com/greet v1.0.0\n",
            "vendor/modules.txt": (
                "# example.com/greet v1.0.0\n## explicit; go 1.19\nexample.com/greet\n"
            ),
            "vendor/example.com/greet/greet.go": (
                'package greet\n\nfunc Hello() string { return "hello from a vendored module" }\n'
            ),
            "main.go": (
                'package main\n\nimport (\n\t"fmt"\n\n\t"example.com/greet"\n)\n\n'
                'func main() { fmt.Println(greet.Hello(), "v1") }\n'
            ),
            "Procfile": "hello: hello\n",
        },
        images={"builder": "go", "base": BUSYBOX_IMAGE},
        # No download with a vendor folder: the reused layer is the standard library's.
        install="RUN go build -trimpath std",
        says="hello from a vendored module v1",
        edit=("main.go", "v1", "v2"),
        one_stage=False,
    ),
    "ruby": StackApp(
        stack="ruby",
        marker="Gemfile",
        files={
            "Gemfile": 'source "https://rubygems.org"\n',
            "app.rb": "puts \"hello from ruby #{RUBY_VERSION.split('.').first}\"\n",
            "Procfile": "hello: bundle exec ruby app.rb\n",
        },
        images={"base": "ruby"},
        install="RUN bundle install --jobs 4",
        says="hello from ruby 3",
        edit=("app.rb", "hello from", "hi again from"),
    ),
    "php": StackApp(
        stack="php",
        marker="composer.json",
        files={
            "composer.json": (
                '{"name": "hgrun/app", "require": {},\n'
                ' "autoload": {"psr-4": {"App\\\\": "src/"}}}\n'
            ),
            "src/Greeter.php": (
                "<?php\nnamespace App;\n\nclass Greeter\n{\n"
                "    public static function hello(): string { return 'hello from php'; }\n}\n"
            ),
            "hello.php": (
                "<?php\nrequire __DIR__ . '/vendor/autoload.php';\n"
                "echo App\\Greeter::hello(), ' ', PHP_MAJOR_VERSION, PHP_EOL;\n"
            ),
            "Procfile": "hello: php hello.php\n",
        },
        images={"builder": "php", "base": "php"},
        install=(
            "RUN composer install --no-dev --no-interaction --no-progress --prefer-dist "
            "--no-scripts --no-autoloader --ignore-platform-reqs"
        ),
        says="hello from php 8",
        edit=("src/Greeter.php", "hello from", "hi again from"),
        one_stage=False,
    ),
    "rust": StackApp(
        stack="rust",
        marker="Cargo.toml",
        files={
            "Cargo.toml": '[package]\nname = "hello"\nversion = "0.1.0"\nedition = "2021"\n',
            "src/main.rs": 'fn main() {\n    println!("hello from rust {}", 6 * 7);\n}\n',
            "Procfile": "hello: hello\n",
        },
        # A rust binary links glibc: any Debian bookworm runs it; the python image is one.
        images={"builder": "rust", "base": "python"},
        install=(
            "RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && cargo build --release "
            "&& rm -rf src"
        ),
        says="hello from rust 42",
        edit=("src/main.rs", "hello from", "hi again from"),
        one_stage=False,
    ),
}


def write_app(root: Path, name: str, app: StackApp, images: dict[str, str]) -> Path:
    build = "".join(f"  {key}: {image}\n" for key, image in images.items())
    (root / "hgrun.yaml").write_text(f"name: {name}\nbuild:\n{build}")
    for relpath, text in app.files.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_text(text)
    return root


def step_cached(output: str, instruction: str) -> bool | None:
    """Whether the builder reused the layer of ``instruction``: the line after its
    ``Step N/M : INSTRUCTION`` says ``Using cache``. None when the step is not in ``output``."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    wanted = " ".join(instruction.split())
    for i, line in enumerate(lines):
        match = re.search(r"Step \d+/\d+ : (.*)$", line)
        if match and " ".join(match[1].split()) == wanted:
            return i + 1 < len(lines) and "Using cache" in lines[i + 1]
    return None


def released_image(cli: Cli, name: str) -> str:
    import json

    done = cli("releases", "--app", name, "--json")
    assert done.returncode == 0, done.stderr
    image: str = json.loads(done.stdout)[0]["image"]
    return image


def run_stack_app(
    stack: str,
    cli: Cli,
    stack_image: Callable[[str], str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    app = APPS[stack]
    images = {
        key: image if "/" in image else stack_image(image) for key, image in app.images.items()
    }
    name = f"stack-{stack}-{uuid.uuid4().hex[:6]}"
    root = write_app(tmp_path, name, app, images)
    assert cli("apps:create", name).returncode == 0

    first = cli("deploy", cwd=root, timeout=900)
    err = first.stderr.decode()
    assert first.returncode == 0, err
    assert f"detected {app.stack} ({app.marker})" in err
    # The install step ran (the first build of this app's dependencies on this engine may
    # still find it cached from another test session: either way it is in the output).
    assert step_cached(err, app.install) is not None, err
    ran = cli("run", "--no-build", "--app", name, "hello", cwd=root)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.decode().strip() == app.says
    uid = cli("run", "--no-build", "--app", name, "id", "-u", cwd=root)
    assert uid.stdout.decode().strip() == "10001", uid.stderr
    # Not root, and still at home in /app and /tmp/uploads: reads its upload, writes beside it.
    upload = tmp_path / "upload.txt"
    upload.write_text("uploaded\n")
    script = "cat /tmp/uploads/upload.txt && touch /tmp/uploads/done $HOME/done && pwd"
    used = cli("run", "--no-build", "--app", name, "--file", str(upload), "sh", "-c", script)
    assert used.returncode == 0, used.stderr
    assert used.stdout.decode().split() == ["uploaded", "/app"]
    image_before = released_image(cli, name)

    relpath, old, new = app.edit
    source = root / relpath
    source.write_text(source.read_text().replace(old, new))
    second = cli("deploy", cwd=root, timeout=900)
    err = second.stderr.decode()
    assert second.returncode == 0, err
    assert step_cached(err, app.install) is True, err
    assert step_cached(err, "COPY . .") is False, err
    assert re.search(r"Released \S+ v2 \(\w+\) in [\d.]+s; \d+ of \d+ build steps from cache", err)
    ran = cli("run", "--no-build", "--app", name, "hello", cwd=root)
    assert ran.stdout.decode().strip() == app.says.replace(old, new), ran.stderr

    image_after = released_image(cli, name)
    assert image_after != image_before
    if app.one_stage:
        # The run image itself shares every layer up to the dependencies with the first one.
        before = docker_client.images.get(image_before).attrs["RootFS"]["Layers"]
        after = docker_client.images.get(image_after).attrs["RootFS"]["Layers"]
        assert before[:-1] == after[:-1] and before[-1] != after[-1]


@pytest.mark.parametrize("stack", ["python", "node", "go", "go-vendored", "ruby", "php"])
def test_stack_deploys_runs_and_reuses_dependencies(
    stack: str,
    cli: Cli,
    stack_image: Callable[[str], str],
    busybox_image: str,  # the go app runs on it
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    run_stack_app(stack, cli, stack_image, docker_client, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["rust"])
def test_slow_stack_deploys_runs_and_reuses_dependencies(
    stack: str,
    cli: Cli,
    stack_image: Callable[[str], str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    if not stack_image_cached(stack):
        pytest.skip(f"hgrun/{stack}:bookworm is not cached: make it with scripts/images --{stack}")
    run_stack_app(stack, cli, stack_image, docker_client, tmp_path)


def test_build_network_is_the_builds_not_the_apps(
    cli: Cli, stack_image: Callable[[str], str], tmp_path: Path
) -> None:
    """build.network goes with the build request (here one the server does not allow: it is
    refused by name before any build, since builds need --allow-network like runs)."""
    app = APPS["python"]
    name = f"stack-net-{uuid.uuid4().hex[:6]}"
    root = write_app(tmp_path, name, app, {"base": stack_image("python")})
    manifest = root / "hgrun.yaml"
    manifest.write_text(manifest.read_text() + "  network: hgrun-test-no-such-net\n")
    # A requirements.txt of its own, so the install step runs (a cached step runs nothing).
    (root / "requirements.txt").write_text(f"# {name}\n")
    assert cli("apps:create", name).returncode == 0
    done = cli("deploy", cwd=root, timeout=900)
    err = done.stderr.decode()
    assert done.returncode != 0
    assert "hgrun-test-no-such-net" in err, err
    assert "the build asks for network 'hgrun-test-no-such-net'" in err, err
    assert "--allow-network hgrun-test-no-such-net" in err, err
