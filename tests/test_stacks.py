"""Stack detection and the generated Dockerfiles, as tables (no Docker, no files)."""

from __future__ import annotations

import json
import re

import pytest

from hgrun.errors import InputError, LocatedError
from hgrun.stacks import DEFAULTS, ORDER, AppFiles, detect, hint_for, plan


def files(*names: str, **texts: str) -> AppFiles:
    """An app folder holding ``names``; ``texts`` by file name with '.' written '_'."""
    contents = {k.replace("_", "."): v for k, v in texts.items()}
    return AppFiles(frozenset(names) | frozenset(contents), contents)


GO_MOD = "module example.com/hello\n\ngo 1.19\n"


def steps(dockerfile: str) -> list[str]:
    """The instructions of a Dockerfile, continuation lines joined, comments dropped."""
    joined = dockerfile.replace("\\\n", " ")
    return [
        " ".join(line.split())
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def stages(dockerfile: str) -> list[list[str]]:
    """The instructions, split into stages at each FROM."""
    out: list[list[str]] = []
    for step in steps(dockerfile):
        if step.startswith("FROM "):
            out.append([])
        out[-1].append(step)
    return out


# -- detection --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "stack", "marker"),
    [
        ({"requirements.txt"}, "python", "requirements.txt"),
        ({"pyproject.toml"}, "python", "pyproject.toml"),
        ({"Pipfile", "Pipfile.lock"}, "python", "Pipfile"),
        ({"setup.py"}, "python", "setup.py"),
        ({"manage.py"}, "python", "manage.py"),
        ({"requirements.txt", "pyproject.toml"}, "python", "requirements.txt"),
        ({"package.json"}, "node", "package.json"),
        ({"go.mod", "go.sum"}, "go", "go.mod"),
        ({"Gemfile", "Gemfile.lock"}, "ruby", "Gemfile"),
        ({"composer.json"}, "php", "composer.json"),
        ({"pom.xml"}, "java", "pom.xml"),
        ({"build.gradle"}, "java", "build.gradle"),
        ({"build.gradle.kts"}, "java", "build.gradle.kts"),
        ({"Cargo.toml"}, "rust", "Cargo.toml"),
        # A lockfile alone is not a marker.
        ({"package-lock.json"}, None, None),
        ({"Gemfile.lock", "go.sum", "Cargo.lock", "composer.lock"}, None, None),
        ({"README.md", "main.c", "Dockerfile"}, None, None),
        (set(), None, None),
    ],
)
def test_detect(names: set[str], stack: str | None, marker: str | None) -> None:
    found = detect(frozenset(names))
    if stack is None:
        assert found is None
    else:
        assert found is not None
        assert (found.stack, found.marker, found.others) == (stack, marker, ())
        assert found.describe() == f"detected {stack} ({marker})"


@pytest.mark.parametrize(
    ("names", "stack", "line"),
    [
        (
            {"package.json", "go.mod"},
            "go",
            "detected go (go.mod); also matched node (package.json): go comes first, "
            "set build.stack to choose",
        ),
        (
            {"Gemfile", "package.json"},
            "ruby",
            "detected ruby (Gemfile); also matched node (package.json): ruby comes first, "
            "set build.stack to choose",
        ),
        (
            {"composer.json", "package.json", "requirements.txt"},
            "php",
            "detected php (composer.json); also matched python (requirements.txt), "
            "node (package.json): php comes first, set build.stack to choose",
        ),
        (
            {"Cargo.toml", "pom.xml"},
            "rust",
            "detected rust (Cargo.toml); also matched java (pom.xml): rust comes first, "
            "set build.stack to choose",
        ),
    ],
)
def test_detect_conflict_follows_the_documented_order(
    names: set[str], stack: str, line: str
) -> None:
    found = detect(frozenset(names))
    assert found is not None and found.stack == stack
    assert found.describe() == line


def test_order_covers_every_stack_once() -> None:
    assert sorted(ORDER) == sorted(["python", "node", "go", "ruby", "php", "java", "rust"])


def test_no_stack_no_plan() -> None:
    assert plan(files("README.md", "main.c")) is None


# -- every stack: dependency layer before the source, stages, user, workdir ------------------

# (files, the copy of the manifests, the install step, stack)
LAYERS = [
    (files("requirements.txt"), "COPY requirements.txt ./", "RUN pip install -r requirements.txt"),
    (
        files("package.json", "package-lock.json", package_json="{}"),
        "COPY package.json package-lock.json ./",
        "RUN npm ci --omit=dev --no-audit --no-fund",
    ),
    (
        files("package.json", "npm-shrinkwrap.json", package_json="{}"),
        "COPY package.json npm-shrinkwrap.json ./",
        "RUN npm ci --omit=dev --no-audit --no-fund",
    ),
    (
        files("package.json", package_json="{}"),
        "COPY package.json ./",
        "RUN npm install --omit=dev --no-audit --no-fund",
    ),
    (
        files("package.json", "yarn.lock", package_json="{}"),
        "COPY package.json yarn.lock ./",
        "RUN yarn install --frozen-lockfile --non-interactive --production",
    ),
    (
        files("package.json", "yarn.lock", ".yarnrc.yml", package_json="{}"),
        "COPY package.json yarn.lock .yarnrc.yml ./",
        "RUN corepack enable && yarn install --immutable",
    ),
    (
        files("package.json", "pnpm-lock.yaml", package_json="{}"),
        "COPY package.json pnpm-lock.yaml ./",
        "RUN corepack enable && pnpm install --frozen-lockfile --prod",
    ),
    (files("go.mod", go_mod=GO_MOD), "COPY go.mod ./", "RUN go mod download"),
    (files("go.mod", "go.sum", go_mod=GO_MOD), "COPY go.mod go.sum ./", "RUN go mod download"),
    (files("Gemfile"), "COPY Gemfile ./", "RUN bundle install --jobs 4"),
    (
        files("Gemfile", "Gemfile.lock"),
        "COPY Gemfile Gemfile.lock ./",
        "RUN BUNDLE_FROZEN=true bundle install --jobs 4",
    ),
    (
        files("composer.json"),
        "COPY composer.json ./",
        "RUN composer install --no-dev --no-interaction --no-progress --prefer-dist "
        "--no-scripts --no-autoloader --ignore-platform-reqs",
    ),
    (
        files("composer.json", "composer.lock"),
        "COPY composer.json composer.lock ./",
        "RUN composer install --no-dev --no-interaction --no-progress --prefer-dist "
        "--no-scripts --no-autoloader --ignore-platform-reqs",
    ),
    (
        files("Cargo.toml", Cargo_toml='[package]\nname = "hello"\n'),
        "COPY Cargo.toml ./",
        "RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && cargo build --release "
        "&& rm -rf src",
    ),
    (
        files("Cargo.toml", "Cargo.lock", Cargo_toml='[package]\nname = "hello"\n'),
        "COPY Cargo.toml Cargo.lock ./",
        "RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && cargo build --release "
        "--locked && rm -rf src",
    ),
    (
        files("Cargo.toml", "Cargo.lock", Cargo_toml='[workspace]\nmembers = ["a"]\n'),
        "COPY Cargo.toml Cargo.lock ./",
        "RUN cargo fetch --locked",
    ),
    (
        files("pom.xml", pom_xml="<project/>"),
        "COPY pom.xml ./",
        "RUN mvn -B -q dependency:go-offline",
    ),
    (
        files("pom.xml", "mvnw", ".mvn/", pom_xml="<project/>"),
        "COPY pom.xml mvnw ./",
        "RUN ./mvnw -B -q dependency:go-offline",
    ),
    (
        files("build.gradle", "settings.gradle"),
        "COPY build.gradle settings.gradle ./",
        "RUN gradle --no-daemon -q dependencies > /dev/null",
    ),
    (
        files("build.gradle.kts", "gradlew", "gradle/"),
        "COPY build.gradle.kts gradlew ./",
        "RUN ./gradlew --no-daemon -q dependencies > /dev/null",
    ),
]


@pytest.mark.parametrize(("app", "copy", "install"), LAYERS)
def test_dependencies_install_before_the_source(app: AppFiles, copy: str, install: str) -> None:
    made = plan(app)
    assert made is not None
    first = stages(made.dockerfile)[0]
    assert copy in first, made.dockerfile
    assert install in first, made.dockerfile
    # The manifests, then the install, then the source: a source change keeps the install layer.
    assert first.index(copy) < first.index(install) < first.index("COPY . .")
    assert hint_for(made, install) is not None


@pytest.mark.parametrize(("app", "copy", "install"), LAYERS)
def test_run_image_is_non_root_in_app(app: AppFiles, copy: str, install: str) -> None:
    made = plan(app)
    assert made is not None
    run = stages(made.dockerfile)[-1]
    assert "WORKDIR /app" in run
    assert run[-1] == "USER 10001:10001" or run[-2:] == [
        "USER 10001:10001",
        'CMD ["java", "-jar", "/app/app.jar"]',
    ]
    assert any(s.startswith("RUN useradd --uid 10001") for s in run)


@pytest.mark.parametrize(
    ("app", "stack", "builder", "base", "artefact"),
    [
        (files("go.mod", go_mod=GO_MOD), "go", "golang:1-bookworm", "debian:bookworm-slim",
         "COPY --from=build /out/bin/ /app/bin/"),
        (files("Cargo.toml"), "rust", "rust:1-bookworm", "debian:bookworm-slim",
         "COPY --from=build /out/bin/ /app/bin/"),
        (files("pom.xml"), "java", "maven:3.9-eclipse-temurin-21", "eclipse-temurin:21-jre",
         "COPY --from=build /out/app.jar /app/app.jar"),
        (files("build.gradle"), "java", "gradle:8-jdk21", "eclipse-temurin:21-jre",
         "COPY --from=build /out/app.jar /app/app.jar"),
        (files("composer.json"), "php", "composer:2", "php:8.3-cli-bookworm",
         "COPY --from=build /app /app"),
    ],
)  # fmt: skip
def test_compiled_stacks_are_two_stages(
    app: AppFiles, stack: str, builder: str, base: str, artefact: str
) -> None:
    made = plan(app)
    assert made is not None and made.stack == stack
    build, run = stages(made.dockerfile)
    assert build[0] == f"FROM {builder} AS build"
    assert run[0] == f"FROM {base}"
    assert artefact in run
    # The run image gets the artefact, never the source or the toolchain's files.
    assert "COPY . ." not in run


@pytest.mark.parametrize(
    ("app", "base"),
    [
        (files("requirements.txt"), "python:3.12-slim-bookworm"),
        (files("package.json", package_json="{}"), "node:22-bookworm-slim"),
        (files("Gemfile"), "ruby:3.3-slim-bookworm"),
    ],
)
def test_interpreted_stacks_are_one_stage(app: AppFiles, base: str) -> None:
    made = plan(app)
    assert made is not None
    (only,) = stages(made.dockerfile)
    assert only[0] == f"FROM {base}"


# -- overrides ----------------------------------------------------------------------------------


def test_base_and_builder_override_the_defaults() -> None:
    made = plan(
        files("go.mod", go_mod=GO_MOD),
        base="hgrun-test/busybox:latest",
        builder="hgrun/go:bookworm",
    )
    assert made is not None
    build, run = stages(made.dockerfile)
    assert build[0] == "FROM hgrun/go:bookworm AS build"
    assert run[0] == "FROM hgrun-test/busybox:latest"


def test_base_overrides_a_one_stage_stack() -> None:
    made = plan(files("Gemfile"), base="hgrun/ruby:bookworm")
    assert made is not None
    assert steps(made.dockerfile)[0] == "FROM hgrun/ruby:bookworm"


def test_builder_on_a_one_stage_stack_is_refused() -> None:
    with pytest.raises(InputError, match="build.builder does not apply to ruby"):
        plan(files("Gemfile"), builder="ruby:3.3-bookworm")


def test_stack_overrides_detection() -> None:
    made = plan(files("go.mod", "package.json", go_mod=GO_MOD, package_json="{}"), stack="node")
    assert made is not None and made.stack == "node"
    assert made.reason == "stack node (build.stack in hgrun.yaml)"
    assert steps(made.dockerfile)[0] == "FROM node:22-bookworm-slim"


def test_stack_without_its_manifest_is_refused() -> None:
    with pytest.raises(InputError, match=r"build.stack is go, but the app has no go.mod"):
        plan(files("package.json", package_json="{}"), stack="go")


@pytest.mark.parametrize("stack", ORDER)
def test_every_stack_has_defaults_and_a_plan(stack: str) -> None:
    marker = {"python": "requirements.txt", "node": "package.json", "go": "go.mod",
              "ruby": "Gemfile", "php": "composer.json", "java": "pom.xml",
              "rust": "Cargo.toml"}[stack]  # fmt: skip
    texts = {"go.mod": GO_MOD, "package.json": "{}"}
    made = plan(AppFiles(frozenset({marker}), texts), stack=stack)
    assert made is not None and made.stack == stack
    assert DEFAULTS[stack].base in made.dockerfile
    assert made.dockerfile.startswith(f"# Generated by hgrun for a {stack} app")


# -- python dependency sources ----------------------------------------------------------------

PIPFILE_LOCK = {
    "_meta": {},
    "default": {
        "requests": {"version": "==2.31.0", "hashes": ["sha256:aa", "sha256:bb"]},
        "colorama": {
            "version": "==0.4.6",
            "hashes": ["sha256:cc"],
            "markers": "sys_platform == 'win32'",
        },
    },
    "develop": {"pytest": {"version": "==8.0.0", "hashes": ["sha256:dd"]}},
}


@pytest.mark.parametrize(
    ("app", "requirements"),
    [
        (
            files("Pipfile", "Pipfile.lock", Pipfile_lock=json.dumps(PIPFILE_LOCK)),
            "colorama==0.4.6 ; sys_platform == 'win32' --hash=sha256:cc\n"
            "requests==2.31.0 --hash=sha256:aa --hash=sha256:bb\n",
        ),
        (
            files(
                "Pipfile",
                Pipfile='[packages]\nflask = "*"\nrequests = ">=2"\n'
                'rich = {version = "==13.0", extras = ["jupyter"]}\n'
                '[dev-packages]\npytest = "*"\n',
            ),
            "flask\nrequests>=2\nrich[jupyter]==13.0\n",
        ),
        (
            files(
                "pyproject.toml",
                pyproject_toml='[project]\nname = "a"\ndependencies = ["flask>=3", "rich"]\n',
            ),
            "flask>=3\nrich\n",
        ),
    ],
)
def test_python_requirements_from_pipfile_and_pyproject(app: AppFiles, requirements: str) -> None:
    made = plan(app)
    assert made is not None
    assert made.generated == {".hgrun-requirements.txt": requirements.encode()}
    run = steps(made.dockerfile)
    assert run.index("COPY .hgrun-requirements.txt ./") < run.index("COPY . .")
    assert "RUN pip install -r .hgrun-requirements.txt" in run


def test_python_pyproject_without_a_dependency_list_installs_the_project() -> None:
    made = plan(files("pyproject.toml", pyproject_toml='[tool.poetry]\nname = "a"\n'))
    assert made is not None
    run = steps(made.dockerfile)
    assert run.index("COPY . .") < run.index("RUN pip install .")
    assert made.generated == {}


def test_python_requirements_txt_wins_over_pyproject() -> None:
    made = plan(
        files("requirements.txt", "pyproject.toml", pyproject_toml='[project]\nname = "a"\n')
    )
    assert made is not None
    assert "RUN pip install -r requirements.txt" in steps(made.dockerfile)
    assert made.generated == {}


# -- node variants ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "install", "build"),
    [
        (
            files("package.json", "package-lock.json", package_json='{"scripts":{"build":"x"}}'),
            "RUN npm ci --no-audit --no-fund",
            "RUN npm run build && npm prune --omit=dev",
        ),
        (
            files("package.json", "pnpm-lock.yaml", package_json='{"scripts":{"build":"x"}}'),
            "RUN corepack enable && pnpm install --frozen-lockfile",
            "RUN pnpm run build && pnpm prune --prod",
        ),
        (
            files("package.json", "yarn.lock", package_json='{"scripts":{"build":"x"}}'),
            "RUN yarn install --frozen-lockfile --non-interactive",
            "RUN yarn run build && yarn install --frozen-lockfile --production --offline",
        ),
    ],
)
def test_node_build_script_gets_dev_dependencies_then_prunes(
    app: AppFiles, install: str, build: str
) -> None:
    made = plan(app)
    assert made is not None
    run = steps(made.dockerfile)
    assert run.index(install) < run.index("COPY . .") < run.index(build)


def test_node_package_manager_field_wins_over_lockfile() -> None:
    app = files("package.json", "package-lock.json", package_json='{"packageManager":"pnpm@9.1.0"}')
    made = plan(app)
    assert made is not None
    assert "RUN corepack enable && pnpm install --frozen-lockfile --prod" in steps(made.dockerfile)


def test_go_vendor_folder_skips_the_download() -> None:
    made = plan(files("go.mod", "vendor/", go_mod=GO_MOD))
    assert made is not None
    assert "RUN go mod download" not in steps(made.dockerfile)


# -- broken manifests: one clear line -----------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            files("go.mod", go_mod="module example.com/a\nfoo bar\n"),
            "go.mod:2:1: unknown directive 'foo'",
        ),
        (
            files("go.mod", go_mod="go 1.22\nrequire (\n\texample.com/b v1.0.0\n)\n"),
            "go.mod:1: no module line",
        ),
        (files("package.json", package_json='{"name": "a",}'), "package.json:1:14: not valid JSON"),
        (files("package.json", package_json="[]"), "package.json:1:1: must be a JSON object"),
        (
            files("Pipfile.lock", "Pipfile", Pipfile_lock="{nope"),
            "Pipfile.lock:1:2: not JSON",
        ),
        (
            files("Pipfile", Pipfile='[packages]\nmine = {path = "."}\n'),
            "Pipfile: packages.mine: only versions, extras and markers are supported here",
        ),
        (
            files("pyproject.toml", pyproject_toml="[project\n"),
            "pyproject.toml:1:9: not valid TOML",
        ),
        (files("Cargo.toml", Cargo_toml="[package\n"), "Cargo.toml:1:9: not valid TOML"),
    ],
)
def test_broken_manifest_is_one_located_line(app: AppFiles, message: str) -> None:
    with pytest.raises(LocatedError) as caught:
        plan(app)
    assert caught.value.message.startswith(message)
    assert "\n" not in caught.value.message
    assert caught.value.hint


def test_go_mod_blocks_and_comments_are_accepted() -> None:
    text = (
        "// a comment\nmodule example.com/a // trailing\n\ngo 1.22\ntoolchain go1.22.1\n"
        "require (\n\texample.com/b v1.0.0 // indirect\n)\nreplace example.com/b => ../b\n"
        "tool example.com/b/cmd/gen\nignore ./node_modules\n"
    )
    assert plan(files("go.mod", go_mod=text)) is not None


# -- failing steps get their hint ---------------------------------------------------------------


def test_hint_for_matches_the_step_as_the_builder_echoes_it() -> None:
    made = plan(files("composer.json"))
    assert made is not None
    echoed = (
        "RUN composer install --no-dev --no-interaction --no-progress --prefer-dist"
        "     --no-scripts --no-autoloader --ignore-platform-reqs"
    )
    hint = hint_for(made, echoed)
    assert hint is not None and hint.startswith("composer could not install the packages")
    assert hint_for(made, "COPY . .") is None


def test_generated_dockerfiles_have_no_trailing_spaces() -> None:
    for app, _, _ in LAYERS:
        made = plan(app)
        assert made is not None
        assert not re.search(r"[ \t]$", made.dockerfile, re.M)


# -- docs/stacks.md shows what the code writes ---------------------------------------------------

DOCUMENTED = [
    files("requirements.txt"),
    files("package.json", "package-lock.json", package_json="{}"),
    files("go.mod", "go.sum", go_mod=GO_MOD),
    files("Gemfile", "Gemfile.lock"),
    files("composer.json", "composer.lock"),
    files("pom.xml", pom_xml="<project/>"),
    files("Cargo.toml", "Cargo.lock", Cargo_toml='[package]\nname = "hello"\n'),
]


@pytest.mark.parametrize("app", DOCUMENTED)
def test_docs_show_each_generated_dockerfile(app: AppFiles) -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "stacks.md").read_text()
    made = plan(app)
    assert made is not None
    body = made.dockerfile.split("\n", 2)[2]  # without the two comment lines
    assert f"```dockerfile\n{body}```" in doc
