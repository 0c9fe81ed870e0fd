"""The Docker engine: the only module that imports ``docker``.

docker-py serves the plain request/response calls (run in a worker thread by the caller). The
streaming calls (``attach``, ``put_archive``, ``logs``) go over asyncio instead, spoken on the
wire by :mod:`hgrun.engine.dockerwire`, because docker-py buffers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import IO

import docker
import docker.errors
import httpx
import requests.exceptions
from docker.types import Ulimit

from hgrun.duration import format_duration
from hgrun.engine import (
    DEFAULT_BUILD_LIMITS,
    DEFAULT_LOG_BYTES,
    BuildLimits,
    ContainerSpec,
    ContainerState,
    EngineInfo,
)
from hgrun.engine.attachpipe import Pipe
from hgrun.engine.dockerevents import Exits
from hgrun.engine.dockerspec import create_args, name_files
from hgrun.engine.dockerwire import (
    ERROR_BODY,
    RawAttach,
    answer_head,
    container_state,
    head_status,
    json_message,
    listed_state,
    send_chunked,
    unchunked,
)
from hgrun.engine.multiplex import Demuxer
from hgrun.engine.span import SocketSpan
from hgrun.engine.tls import EngineTLS, trust_only
from hgrun.errors import (
    CommandNotFoundError,
    EngineError,
    HgrunError,
    NotExecutableError,
    NotFoundError,
)

DEFAULT_HOST = "unix:///var/run/docker.sock"
MIN_API = "1.41"  # dockerd 20.10: what hgrun's engines are tested against
CPU_PERIOD = 100_000  # microseconds: CFS's default period, as docker run --cpus uses
# docker-py keeps 10 connections per client; more threads than that calling it at once make it
# drop connections ("Connection pool is full"), so the server's engine pool stays under it.
CONCURRENCY = 8


def _too_long(limits: BuildLimits) -> EngineError:
    return EngineError(
        f"the build took longer than {format_duration(limits.timeout)}: stopped",
        "make the build faster (a smaller context, cached layers), or raise the server's"
        " --build-timeout",
    )


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    """Translate docker-py and transport errors into the hgrun error tree."""
    try:
        yield
    except HgrunError:
        raise
    except docker.errors.NotFound as e:
        raise NotFoundError(f"{what}: {_explain(e)}") from e
    except docker.errors.APIError as e:
        raise EngineError(f"{what}: {_explain(e)}") from e
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
        raise EngineError(
            f"{what}: cannot reach the Docker engine ({e})",
            "check that dockerd runs and that --docker-host / DOCKER_HOST points at it",
        ) from e


def _explain(e: docker.errors.APIError) -> str:
    return str(e.explanation or e)


class DockerEngine:
    concurrency = CONCURRENCY

    def __init__(
        self,
        host: str | None = None,
        timeout: float = 120.0,
        tls: EngineTLS | None = None,
        version: str = "auto",
        log_bytes: int = DEFAULT_LOG_BYTES,
    ) -> None:
        """``tls``: TLS with a client certificate for a ``tcp://`` host (a unix socket is
        never wrapped: its file mode guards it). ``log_bytes``: see :func:`create_args`."""
        self.log_bytes = log_bytes
        self.host = host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        url = urllib.parse.urlsplit(self.host)
        self._ssl = tls.context() if tls is not None and url.scheme == "tcp" else None
        with _translate(f"cannot connect to the Docker engine at {self.host}"):
            if self._ssl is not None and tls is not None:
                # Asked with trust_only in place (docker-py's "auto" asks in its constructor).
                self._client = docker.DockerClient(
                    base_url=self.host,
                    version=MIN_API if version == "auto" else version,
                    timeout=timeout,
                    tls=tls.docker(),
                )
                trust_only(self._client.api)
                if version == "auto":
                    answered = self._client.api.version(api_version=False)["ApiVersion"]
                    self._client.api._version = str(answered)
            else:
                self._client = docker.DockerClient(
                    base_url=self.host, version=version, timeout=timeout
                )
            self._api = self._client.api
            self._version = self._api.api_version
        if url.scheme == "unix":
            self._uds: str | None = url.path
            self._tcp: tuple[str, int] | None = None
            transport = httpx.AsyncHTTPTransport(uds=url.path)
            base = "http://docker"
        elif url.scheme in ("tcp", "http"):
            self._uds = None
            self._tcp = (url.hostname or "127.0.0.1", url.port or 2375)
            if self._ssl is not None:
                transport = httpx.AsyncHTTPTransport(verify=self._ssl)
                base = f"https://{self._tcp[0]}:{self._tcp[1]}"
            else:
                transport = httpx.AsyncHTTPTransport()
                base = f"http://{self._tcp[0]}:{self._tcp[1]}"
        else:
            raise EngineError(
                f"unsupported Docker host {self.host!r}", "use unix:///path or tcp://host:port"
            )
        self._http = httpx.AsyncClient(transport=transport, base_url=base, timeout=None)
        self._exits = Exits(self._events)

    def _path(self, path: str) -> str:
        return f"/v{self._version}{path}"

    # -- plain calls (blocking; callers run them in a thread) ------------------------------

    def info(self) -> EngineInfo:
        with _translate("cannot read the engine's info"):
            info = self._api.info()
            version = self._api.version().get("Version", "?")
        return EngineInfo(cpus=int(info["NCPU"]), memory=int(info["MemTotal"]), version=version)

    def image_id(self, image: str) -> str | None:
        try:
            with _translate(f"cannot inspect image {image}"):
                return str(self._api.inspect_image(image)["Id"])
        except NotFoundError:
            return None

    def image_user(self, image: str) -> str:
        """The user the image's containers run as (its ``USER``; empty: root)."""
        with _translate(f"cannot inspect image {image}"):
            return str((self._api.inspect_image(image).get("Config") or {}).get("User") or "")

    def build(
        self,
        context: IO[bytes],
        *,
        tag: str,
        labels: Mapping[str, str],
        network: str,
        dockerfile: str = "Dockerfile",
        limits: BuildLimits = DEFAULT_BUILD_LIMITS,
    ) -> Iterator[str]:
        """Build ``context`` (a tar) as ``tag``, yielding the build's output line by line.

        Each step's container gets ``limits``' memory (no swap) and CPUs (``POST /build``
        memory, memswap, cpuperiod, cpuquota). The classic builder has no pids limit to give
        (Engine API 1.41 ``/build`` takes none). Past ``limits.timeout`` the build is stopped:
        the connection is closed, and the daemon cancels a build whose client went away
        (killing the step's container; ``forcerm`` removes it). The time is checked at each
        line of output and by the socket's read timeout, so a silent step is stopped too.
        """
        deadline = time.monotonic() + limits.timeout
        params = {
            "t": tag,
            "dockerfile": dockerfile,
            "rm": True,
            "forcerm": True,
            "networkmode": network,
            "labels": json.dumps(dict(labels)),
            "memory": limits.memory,
            "memswap": limits.memory,
            "cpuperiod": CPU_PERIOD,
            "cpuquota": int(limits.cpus * CPU_PERIOD),
        }
        with _translate("the build failed"):
            # docker-py's build() hides its response, and only closing it stops the build.
            response = self._api._post(
                self._api._url("/build"),
                data=context,
                params=params,
                headers={"Content-Type": "application/tar"},
                stream=True,
                timeout=(60, limits.timeout),
            )
        try:
            self._api._raise_for_status(response)
            for event in self._api._stream_helper(response, decode=True):
                if time.monotonic() > deadline:
                    raise _too_long(limits)
                if "error" in event:
                    detail = event.get("errorDetail", {}).get("message") or event["error"]
                    raise EngineError(
                        f"the build failed: {str(detail).strip()}",
                        "fix the Dockerfile or the build context, then deploy again",
                    )
                text = event.get("stream") or event.get("status")
                if text:
                    for line in str(text).splitlines():
                        if line.strip():
                            yield line
        except HgrunError:
            raise
        except Exception as e:
            if time.monotonic() > deadline - 1:  # the read timeout: a step silent till the end
                raise _too_long(limits) from e
            raise EngineError(
                f"the build failed: the engine's answer broke off ({e})",
                "check that dockerd runs, then deploy again",
            ) from e
        finally:
            response.close()

    def create(self, spec: ContainerSpec) -> str:
        args, host = create_args(spec, self.log_bytes)
        with _translate(f"cannot create a container from {spec.image}"):
            host["ulimits"] = [
                Ulimit(**{k.lower(): v for k, v in u.items()}) for u in host["ulimits"]
            ]
            container = self._api.create_container(
                host_config=self._api.create_host_config(**host), **args
            )
        container_id = str(container["Id"])
        if args.get("network_disabled"):
            try:
                with _translate("cannot write /etc/hosts into the container"):
                    self._api.put_archive(container_id, "/", name_files(container_id))
            except HgrunError:
                with contextlib.suppress(HgrunError):  # the put's error is the one to tell
                    self.remove(container_id)
                raise
        return container_id

    def node(self, container_id: str) -> str | None:
        """One host: no node to name."""
        return None

    def start(self, container_id: str) -> None:
        try:
            self._api.start(container_id)
        except docker.errors.APIError as e:
            message = _explain(e)
            # The OCI runtime reports exec failures at start (Docker maps these to 127 and 126).
            if "executable file not found" in message or "no such file or directory" in message:
                raise CommandNotFoundError(f"command not found: {message}") from e
            if "permission denied" in message:
                raise NotExecutableError(f"command not executable: {message}") from e
            raise EngineError(f"cannot start the container: {message}") from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineError(f"cannot start the container: {e}") from e

    def resize(self, container_id: str, width: int, height: int) -> None:
        with contextlib.suppress(HgrunError), _translate("cannot resize the TTY"):
            self._api.resize(container_id, height=height, width=width)

    def wait(self, container_id: str) -> int:
        with _translate("cannot wait for the container"):
            return int(self._api.wait(container_id, timeout=None)["StatusCode"])

    def inspect(self, container_id: str) -> ContainerState:
        with _translate(f"cannot inspect container {container_id[:12]}"):
            return container_state(self._api.inspect_container(container_id))

    def stop(self, container_id: str, grace: float) -> None:
        with contextlib.suppress(NotFoundError), _translate("cannot stop the container"):
            self._api.stop(container_id, timeout=max(0, int(grace)))

    def remove(self, container_id: str) -> None:
        try:
            with _translate("cannot remove the container"):
                self._api.remove_container(container_id, force=True, v=True)
        except NotFoundError:
            pass
        except EngineError as e:
            # 409: someone else (a reaper, `docker rm`) is already removing it.
            if "already in progress" not in e.message:
                raise

    def list(self, labels: Mapping[str, str]) -> list[ContainerState]:
        """One listing: partial states (an inspect each was one call to dockerd per container,
        a thousand every recovery pass with a thousand runs in flight)."""
        filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}
        with _translate("cannot list containers"):
            summaries = self._api.containers(all=True, filters=filters)
        return [listed_state(summary) for summary in summaries]

    # -- streaming calls (asyncio) ----------------------------------------------------------

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the engine as asyncio streams (an upload's request and answer)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = await self._open(lambda: protocol)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _open(self, protocol: Callable[[], asyncio.BaseProtocol]) -> asyncio.Transport:
        """A connection to the engine (its unix socket, or TCP with TLS when configured)
        driven by ``protocol()``."""
        loop = asyncio.get_running_loop()
        try:
            if self._uds is not None:
                transport, _ = await loop.create_unix_connection(protocol, self._uds)
            else:
                assert self._tcp is not None  # noqa: S101 - set together with _uds in __init__
                transport, _ = await loop.create_connection(
                    protocol,
                    *self._tcp,
                    ssl=self._ssl,
                    server_hostname=self._tcp[0] if self._ssl is not None else None,
                )
        except (OSError, ssl.SSLError) as e:
            raise EngineError(f"cannot reach the Docker engine at {self.host}: {e}") from e
        return transport  # type: ignore[return-value]

    async def attach(
        self, container_id: str, *, tty: bool, stdin: bool, logs: bool, running: bool = False
    ) -> RawAttach:
        """Attach to stdio; call before start so no output is lost (as ``docker run`` does).
        ``running``: see :meth:`hgrun.engine.Engine.attach`.

        Docker registers an attach's streams before it answers and closes them when the
        container ends, but it never ends an attach to a container that had ended already, not
        even once the container is removed. An inspect once attached tells which: still
        running, the stream will end with it."""
        stream = await self._attach(container_id, tty=tty, stdin=stdin, logs=logs)
        if running:
            try:
                alive = (await asyncio.to_thread(self.inspect, container_id)).running
            except BaseException:
                await stream.close()
                raise
            if not alive:
                await stream.close()
                raise EngineError(f"container {container_id[:12]} is no longer running")
        return stream

    async def _attach(self, container_id: str, *, tty: bool, stdin: bool, logs: bool) -> RawAttach:
        self._exits.watch()  # before the start, so that the container's end is seen
        query = urllib.parse.urlencode(
            {"stream": 1, "stdout": 1, "stderr": 1, "stdin": int(stdin), "logs": int(logs)}
        )
        pipe = Pipe()
        transport = await self._open(lambda: pipe)
        request = (
            f"POST {self._path(f'/containers/{container_id}/attach')}?{query} HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
        )
        transport.write(request.encode())
        try:
            _, code, status_line = head_status(await pipe.head())
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as e:
            transport.close()
            raise EngineError(f"cannot attach to container {container_id[:12]}: {e}") from e
        if code not in (101, 200):
            body = b""
            if await pipe.wait():
                body = pipe.take(lambda view: view[:ERROR_BODY].tobytes())
            transport.close()
            message = json_message(body) or status_line
            if code == 404:
                raise NotFoundError(f"container {container_id[:12]} not found: {message}")
            raise EngineError(f"cannot attach to container {container_id[:12]}: {message}")
        return RawAttach(pipe, transport, tty)

    async def put_archive(
        self, container_id: str, path: str, data: AsyncIterator[bytes | memoryview | SocketSpan]
    ) -> None:
        """Extract a tar stream into the container at ``path`` (which must exist), streaming.

        Written straight to the engine's socket as a chunked request body (RFC 9112 section
        7.1), each piece as it comes, never joined or buffered whole: an upload is one copy
        between the client's socket and the engine's. A piece is sent (or copied) before the
        next is asked for, so ``data`` may reuse one buffer for all of them. An exception from
        ``data`` (a refused entry, the cap) aborts the request, so the engine extracts nothing
        more, and goes up.
        """
        what = "cannot copy files into the container"
        target = self._path(f"/containers/{container_id}/archive")
        query = urllib.parse.urlencode({"path": path})
        reader, writer = await self._connect()
        # Through TLS: up to 1 MiB in flight before a piece waits for the engine (fewer
        # wake-ups than the default 64 KiB, memory still flat). Plain: straight to the socket.
        writer.transport.set_write_buffer_limits(high=1024 * 1024)
        try:
            writer.write(
                f"PUT {target}?{query} HTTP/1.1\r\nHost: docker\r\n"
                "Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            with contextlib.suppress(ConnectionError, OSError):
                # The engine may answer early (and close): its answer says why.
                await writer.drain()
                await send_chunked(writer, data)
            try:
                head, code, status_line = await answer_head(reader)
                body = b"" if 200 <= code < 300 else await reader.read(ERROR_BODY)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as e:
                raise EngineError(f"{what}: the engine closed the connection ({e})") from e
        finally:
            writer.close()
        if code == 404:
            raise NotFoundError(f"{what}: {json_message(unchunked(head, body))}")
        if not 200 <= code < 300:
            raise EngineError(f"{what}: {json_message(unchunked(head, body)) or status_line}")

    async def logs(self, container_id: str, *, tty: bool) -> AsyncIterator[tuple[int, bytes]]:
        """Everything the container wrote so far, as ``(stream, bytes)`` pairs."""
        demuxer = Demuxer(tty)
        try:
            async with self._http.stream(
                "GET",
                self._path(f"/containers/{container_id}/logs"),
                params={"stdout": 1, "stderr": 1, "follow": 0},
            ) as response:
                if response.status_code >= 400:
                    body = await response.aread()
                    raise EngineError(f"cannot read the container's logs: {json_message(body)}")
                async for chunk in response.aiter_raw():
                    for piece in demuxer.feed(chunk):
                        yield piece
        except httpx.HTTPError as e:
            raise EngineError(f"cannot read the container's logs: {e}") from e

    async def ended(self, container_id: str) -> ContainerState | None:
        """The container's end as the engine announced it (its ``die`` event), some 10 ms
        before ``wait`` answers; None: ask ``wait`` (see :mod:`hgrun.engine.dockerevents`)."""
        return await self._exits.ended(container_id)

    @contextlib.asynccontextmanager
    async def _events(
        self, params: dict[str, str]
    ) -> AsyncIterator[tuple[int, AsyncIterator[str]]]:
        """The engine's event stream (``GET /events``): its status and its lines."""
        async with self._http.stream("GET", self._path("/events"), params=params) as response:
            yield response.status_code, response.aiter_lines()

    async def aclose(self) -> None:
        await self._exits.aclose()
        await self._http.aclose()
        self._client.close()
