"""The generated Dockerfile of each stack, and the hint of each step that can fail."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from hgrun.stacks.model import REQUIREMENTS, UID, USER_HOME, AppFiles, Images
from hgrun.stacks.projectfiles import (
    check_go_mod,
    package_json,
    pipfile_lock_requirements,
    pipfile_requirements,
    toml,
)

# -- pieces every Dockerfile shares ------------------------------------------------------------

# useradd where there is one (Debian, Ubuntu); else the two lines it would write (busybox,
# Alpine without shadow). A base with no shell at all (distroless) cannot take this step.
_ADD_USER = (
    f"RUN useradd --uid {UID} --user-group --create-home --home-dir {USER_HOME} app 2>/dev/null"
    f" \\\n    || {{ echo 'app:x:{UID}:{UID}::{USER_HOME}:/bin/sh' >>/etc/passwd"
    f" \\\n         && echo 'app:x:{UID}:' >>/etc/group"
    f" && mkdir -p {USER_HOME} && chown {UID}:{UID} {USER_HOME}; }}"
)
_RUN_AS = f"USER {UID}:{UID}"
_NETWORK_HINT = (
    "the build runs on the app's network (none unless hgrun.yaml says otherwise): set "
    "build.network: default (the engine's, as docker build has) or host, or vendor them"
)


def _copy(files: AppFiles, *names: str) -> str:
    """``COPY a b ./`` of those of ``names`` that exist (a COPY of nothing is an error)."""
    present = [n for n in names if files.has(n)]
    return "COPY " + " ".join(present) + " ./"


def _lines(*parts: str | None) -> str:
    return "\n".join(p for p in parts if p is not None) + "\n"


Written = tuple[str, dict[str, bytes], dict[str, str]]


# -- the stacks ----------------------------------------------------------------------------------


def _python(files: AppFiles, images: Images) -> Written:
    generated: dict[str, bytes] = {}
    install: str | None = None
    after_source: str | None = None
    if files.has("requirements.txt"):
        deps = "requirements.txt"
    elif files.has("Pipfile.lock"):
        deps = REQUIREMENTS
        generated[deps] = pipfile_lock_requirements(files.texts.get("Pipfile.lock", ""))
    elif files.has("Pipfile"):
        deps = REQUIREMENTS
        generated[deps] = pipfile_requirements(files.texts.get("Pipfile", ""))
    elif files.has("pyproject.toml"):
        project = toml("pyproject.toml", files.texts.get("pyproject.toml", ""))
        section = project.get("project")
        listed = section.get("dependencies") if isinstance(section, dict) else None
        if isinstance(listed, list):
            deps = REQUIREMENTS
            generated[deps] = "".join(f"{d}\n" for d in listed if isinstance(d, str)).encode()
        else:
            # No PEP 621 dependency list (Poetry 1, a setup.cfg...): install the project
            # itself once the source is in, through its own build backend.
            deps = None
            after_source = "RUN pip install ."
    elif files.has("setup.py"):
        deps, after_source = None, "RUN pip install ."
    else:
        deps = None
    if deps is not None:
        install = f"RUN pip install -r {deps}"
    text = _lines(
        f"FROM {images.base}",
        "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \\",
        "    PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH",
        _ADD_USER,
        "# A virtualenv: the app's packages apart from the system's (and no PEP 668 refusal).",
        "RUN python3 -m venv /opt/venv",
        "WORKDIR /app",
        "# Dependencies before the source: this layer is reused until they change.",
        f"COPY {deps} ./" if deps else None,
        install,
        "COPY . .",
        after_source,
        _RUN_AS,
    )
    hints = {}
    for step in (install, after_source):
        if step:
            hints[step] = f"pip could not install the dependencies: {_NETWORK_HINT}"
    return text, generated, hints


def _node(files: AppFiles, images: Images) -> Written:
    package = package_json(files.texts.get("package.json", "{}"))
    scripts = package.get("scripts")
    has_build = isinstance(scripts, dict) and isinstance(scripts.get("build"), str)
    manager = _node_manager(files, package)
    lock: tuple[str, ...]
    if manager == "pnpm":
        lock = ("pnpm-lock.yaml",)
        install_all = "RUN corepack enable && pnpm install --frozen-lockfile"
        install_prod = "RUN corepack enable && pnpm install --frozen-lockfile --prod"
        build = "RUN pnpm run build && pnpm prune --prod"
    elif manager == "yarn" and files.has(".yarnrc.yml"):
        # Yarn 2+ (berry): no built-in production-only install; keep every dependency.
        lock = ("yarn.lock", ".yarnrc.yml")
        install_all = install_prod = "RUN corepack enable && yarn install --immutable"
        build = "RUN yarn run build"
    elif manager == "yarn":
        lock = ("yarn.lock",)
        install_all = "RUN yarn install --frozen-lockfile --non-interactive"
        install_prod = "RUN yarn install --frozen-lockfile --non-interactive --production"
        build = "RUN yarn run build && yarn install --frozen-lockfile --production --offline"
    elif files.has("package-lock.json") or files.has("npm-shrinkwrap.json"):
        lock = ("package-lock.json", "npm-shrinkwrap.json")
        install_all = "RUN npm ci --no-audit --no-fund"
        install_prod = "RUN npm ci --omit=dev --no-audit --no-fund"
        build = "RUN npm run build && npm prune --omit=dev"
    else:
        # No lockfile: npm resolves the versions at each dependency change. Commit one.
        lock = ()
        install_all = "RUN npm install --no-audit --no-fund"
        install_prod = "RUN npm install --omit=dev --no-audit --no-fund"
        build = "RUN npm run build && npm prune --omit=dev"
    install = install_all if has_build else install_prod
    text = _lines(
        f"FROM {images.base}",
        _ADD_USER,
        "WORKDIR /app",
        "# Dependencies before the source: this layer is reused until they change.",
        _copy(files, "package.json", *lock),
        # A build script may need the dev dependencies: install all, build, then prune them.
        install,
        "COPY . .",
        build if has_build else None,
        "ENV NODE_ENV=production",
        _RUN_AS,
    )
    hints = {install: f"{manager} could not install the dependencies: {_NETWORK_HINT}"}
    if has_build:
        hints[build] = "the package.json build script failed: run it locally to see why"
    return text, {}, hints


def _node_manager(files: AppFiles, package: Mapping[str, object]) -> str:
    """npm, yarn or pnpm: package.json's packageManager field, else the lockfile, else npm."""
    declared = package.get("packageManager")
    if isinstance(declared, str):
        name = declared.split("@", 1)[0]
        if name in ("npm", "yarn", "pnpm"):
            return name
    if files.has("pnpm-lock.yaml"):
        return "pnpm"
    if files.has("yarn.lock"):
        return "yarn"
    return "npm"


def _go(files: AppFiles, images: Images) -> Written:
    check_go_mod(files.texts.get("go.mod", ""))
    # With a vendor folder the go command builds from it; a download would need the network.
    download = None if files.has("vendor/") else "RUN go mod download"
    std = "RUN go build -trimpath std"
    compile_ = 'RUN go build -trimpath -ldflags="-s -w" -o /out/bin/ ./...'
    text = _lines(
        f"FROM {images.builder} AS build",
        "# Static binaries: they run on any base, even FROM scratch.",
        "ENV CGO_ENABLED=0",
        "# The standard library compiled once per builder image, into the go build cache of",
        "# this layer: without it every source change would compile it again.",
        std,
        "WORKDIR /src",
        "# Modules before the source: this layer is reused until go.mod or go.sum change.",
        _copy(files, "go.mod", "go.sum"),
        download,
        "COPY . .",
        "# Every main package into /out/bin (named after its folder or module).",
        compile_,
        "",
        f"FROM {images.base}",
        _ADD_USER,
        "WORKDIR /app",
        "COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt",
        "COPY --from=build /out/bin/ /app/bin/",
        "ENV PATH=/app/bin:$PATH",
        _RUN_AS,
    )
    hints = {
        compile_: "go build failed: run `go build ./...` locally to see the errors",
        std: "the builder image could not compile Go's standard library: is build.builder "
        "a Go image (golang:1-bookworm)?",
    }
    if download:
        hints[download] = f"go could not fetch the modules of go.mod: {_NETWORK_HINT}"
    return text, {}, hints


def _rust(files: AppFiles, images: Images) -> Written:
    cargo = toml("Cargo.toml", files.texts.get("Cargo.toml", ""))
    locked = " --locked" if files.has("Cargo.lock") else ""
    manifest = _copy(files, "Cargo.toml", "Cargo.lock", "build.rs")
    # Compile the dependencies against a stub main, so they sit in a cached layer; a workspace
    # or a crate with its own [[bin]] paths cannot be stubbed this simply: fetch only.
    if "workspace" in cargo or "bin" in cargo or "lib" in cargo:
        deps = f"RUN cargo fetch{locked}"
    else:
        deps = (
            "RUN mkdir -p src && echo 'fn main() {}' > src/main.rs \\\n"
            f"    && cargo build --release{locked} && rm -rf src"
        )
    compile_ = (
        # The context's files carry old times; touch them so cargo rebuilds over the stub.
        f"RUN find src -name '*.rs' -exec touch {{}} + && cargo build --release{locked} \\\n"
        "    && mkdir -p /out/bin \\\n"
        "    && find target/release -maxdepth 1 -type f -perm -u+x -exec cp {} /out/bin/ \\;"
    )
    text = _lines(
        f"FROM {images.builder} AS build",
        "WORKDIR /src",
        "# Dependencies before the source: reused until Cargo.toml or Cargo.lock change.",
        manifest,
        deps,
        "COPY . .",
        compile_,
        "",
        f"FROM {images.base}",
        _ADD_USER,
        "WORKDIR /app",
        "COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt",
        "COPY --from=build /out/bin/ /app/bin/",
        "ENV PATH=/app/bin:$PATH",
        _RUN_AS,
    )
    hints = {
        deps: f"cargo could not fetch or build the dependencies: {_NETWORK_HINT}",
        compile_: "cargo build failed: run `cargo build --release` locally to see the errors",
    }
    return text, {}, hints


def _java(files: AppFiles, images: Images) -> Written:
    if files.has("pom.xml"):
        mvn = "./mvnw" if files.has("mvnw") and files.has(".mvn/") else "mvn"
        manifest = _copy(files, "pom.xml", "mvnw") + (
            "\nCOPY .mvn ./.mvn" if mvn == "./mvnw" else ""
        )
        # A multi-module build needs every module's pom to resolve: no separate layer then.
        multi = "<modules>" in files.texts.get("pom.xml", "")
        deps = None if multi else f"RUN {mvn} -B -q dependency:go-offline"
        compile_ = (
            f"RUN {mvn} -B -q package -DskipTests && mkdir -p /out \\\n"
            "    && cp \"$(ls target/*.jar | grep -v -e '-sources' -e '-javadoc' -e '/original-'"
            ' | head -n 1)" /out/app.jar'
        )
    else:
        gradle = "./gradlew" if files.has("gradlew") and files.has("gradle/") else "gradle"
        names = (
            "build.gradle",
            "build.gradle.kts",
            "settings.gradle",
            "settings.gradle.kts",
            "gradle.properties",
        )
        manifest = _copy(files, *names, *(("gradlew",) if gradle == "./gradlew" else ()))
        if gradle == "./gradlew":
            manifest += "\nCOPY gradle ./gradle"
        deps = f"RUN {gradle} --no-daemon -q dependencies > /dev/null"
        compile_ = (
            f"RUN {gradle} --no-daemon -q build -x test && mkdir -p /out \\\n"
            "    && cp \"$(ls build/libs/*.jar | grep -v -e '-plain' -e '-sources' -e '-javadoc'"
            ' | head -n 1)" /out/app.jar'
        )
    text = _lines(
        f"FROM {images.builder} AS build",
        "WORKDIR /src",
        "# Dependencies before the source: this layer is reused until the build files change.",
        manifest,
        deps,
        "COPY . .",
        compile_,
        "",
        f"FROM {images.base}",
        _ADD_USER,
        "WORKDIR /app",
        "COPY --from=build /out/app.jar /app/app.jar",
        _RUN_AS,
        'CMD ["java", "-jar", "/app/app.jar"]',
    )
    hints = {compile_: "the build failed: run it locally (mvn package / gradle build) to see why"}
    if deps:
        hints[deps] = f"the dependencies could not be fetched: {_NETWORK_HINT}"
    return text, {}, hints


def _ruby(files: AppFiles, images: Images) -> Written:
    # With a lockfile the install must match it exactly (frozen); without one, bundler
    # resolves and writes it in /app, where `bundle exec` finds it.
    install = (
        "RUN BUNDLE_FROZEN=true bundle install --jobs 4"
        if files.has("Gemfile.lock")
        else "RUN bundle install --jobs 4"
    )
    text = _lines(
        f"FROM {images.base}",
        "ENV BUNDLE_PATH=/usr/local/bundle BUNDLE_WITHOUT=development:test",
        _ADD_USER,
        "WORKDIR /app",
        "# Gems before the source: this layer is reused until Gemfile or Gemfile.lock change.",
        _copy(files, "Gemfile", "Gemfile.lock"),
        install,
        "COPY . .",
        _RUN_AS,
    )
    hints = {
        install: f"bundler could not install the gems: {_NETWORK_HINT}; "
        "gems with C extensions need a base with a compiler (ruby:3.3-bookworm)"
    }
    return text, {}, hints


def _php(files: AppFiles, images: Images) -> Written:
    # The default builder (the composer image) has its own PHP and extensions; the run image's
    # are what matter, so the platform check is left to it.
    install = (
        "RUN composer install --no-dev --no-interaction --no-progress --prefer-dist \\\n"
        "    --no-scripts --no-autoloader --ignore-platform-reqs"
    )
    autoload = "RUN composer dump-autoload --no-dev --optimize --no-interaction"
    text = _lines(
        f"FROM {images.builder} AS build",
        "WORKDIR /app",
        "# Packages before the source: this layer is reused until composer.json/.lock change.",
        _copy(files, "composer.json", "composer.lock"),
        install,
        "COPY . .",
        "# The autoloader maps the app's own classes too, so it is written after the source.",
        autoload,
        "",
        f"FROM {images.base}",
        _ADD_USER,
        "WORKDIR /app",
        "COPY --from=build /app /app",
        _RUN_AS,
    )
    hints = {
        install: f"composer could not install the packages: {_NETWORK_HINT}",
        autoload: "composer dump-autoload failed: check the autoload section of composer.json",
    }
    return text, {}, hints


WRITERS: Mapping[str, Callable[[AppFiles, Images], Written]] = {
    "python": _python,
    "node": _node,
    "go": _go,
    "rust": _rust,
    "java": _java,
    "ruby": _ruby,
    "php": _php,
}
