"""Real headless Chromium for tests: a network namespace to run it in, and a small CDP driver.

Why a namespace: tests may send traffic only to loopback or to hosts they create (DESIGN §4), and
Chromium's ICE does not offer loopback candidates. So each test gets a fresh namespace joined to
the root one by a veth pair (``10.251.X.1/30`` here, ``10.251.X.2/30`` inside, no default route,
no IPv6): the relay binds the root-side address and Chromium, started inside the namespace, can
reach nothing else. Its WebRTC links between tabs use the namespace-side address.

Why CDP over ``--remote-debugging-pipe``: no playwright/selenium dependency and no TCP debugging
port anyone could reach. Chromium reads commands on fd 3 and writes replies and events on fd 4,
each a JSON object followed by a NUL byte; both ends are asyncio pipes, so nothing blocks the loop.

Layout: :func:`browser_namespace` (an async context manager yielding a :class:`BrowserNet`),
:class:`Browser` (one Chromium process; ``open(url)`` gives a :class:`Page`), :class:`Page`
(``evaluate``, ``wait_for``, ``screenshot``, the console it collected). Errors are
:class:`ChromiumError`, with :class:`JavaScriptError` for exceptions thrown by evaluated code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import itertools
import json
import logging
import os
import random
import shutil
import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

CHROMIUM = "chromium"

#: The flags every test browser gets (the issue's recipe); the origin flag is added per relay.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,800",
)

#: Console levels that count as errors (``Page.errors``).
ERROR_LEVELS = frozenset({"error", "exception", "assert"})


class ChromiumError(Exception):
    """Chromium could not be started, died, or refused a DevTools command."""


class JavaScriptError(ChromiumError):
    """Code run by ``Page.evaluate`` threw (or its promise rejected)."""


# --- network namespace ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrowserNet:
    """A namespace for Chromium and the two ends of the veth pair joining it to the root one."""

    netns: str
    host_addr: str  # root side: bind the relay here
    browser_addr: str  # namespace side: Chromium's only non-loopback address


async def _run(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        raise ChromiumError(f"{' '.join(args)} failed ({proc.returncode}): {err.decode().strip()}")
    return out.decode()


async def _free_subnet() -> int:
    """A random X such that no interface here has an address in 10.251.X.0/24 yet."""
    used = await _run("ip", "-o", "-4", "addr", "show")
    for _ in range(64):
        x = random.randrange(256)
        if f"10.251.{x}." not in used:
            return x
    raise ChromiumError("no free 10.251.X.0/24 subnet for a test namespace")


@asynccontextmanager
async def browser_namespace() -> AsyncIterator[BrowserNet]:
    """Create ``cb-<random>`` with a veth pair; on exit kill what runs in it and delete both."""
    if shutil.which("ip") is None:
        raise ChromiumError("the `ip` command (iproute2) is missing: cannot create a namespace")
    tag = f"{random.getrandbits(32):08x}"
    netns, root_if, ns_if = f"cb-{tag}", f"cbr-{tag}", f"cbn-{tag}"
    x = await _free_subnet()
    net = BrowserNet(netns=netns, host_addr=f"10.251.{x}.1", browser_addr=f"10.251.{x}.2")
    try:
        try:
            await _run("ip", "netns", "add", netns)
        except ChromiumError as exc:
            raise ChromiumError(f"{exc} (network namespaces need root or CAP_SYS_ADMIN)") from exc
        await _run(
            "ip", "link", "add", root_if, "type", "veth", "peer", "name", ns_if, "netns", netns
        )
        await _run("ip", "addr", "add", f"{net.host_addr}/30", "dev", root_if)
        await _run("sysctl", "-qw", f"net.ipv6.conf.{root_if}.disable_ipv6=1")
        await _run("ip", "link", "set", root_if, "up")
        inside = ("ip", "netns", "exec", netns)
        await _run(
            *inside,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        )
        await _run("ip", "-n", netns, "addr", "add", f"{net.browser_addr}/30", "dev", ns_if)
        await _run("ip", "-n", netns, "link", "set", ns_if, "up")
        await _run("ip", "-n", netns, "link", "set", "lo", "up")
        yield net
    finally:
        # Anything still running in the namespace was started by this test: end it first, or
        # the namespace outlives its name.
        pids = await _run("ip", "netns", "pids", netns, check=False)
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        await _run("ip", "netns", "del", netns, check=False)
        # Deleting the namespace destroys the pair, but asynchronously: delete our end now.
        await _run("ip", "link", "del", root_if, check=False)


# --- DevTools over a pipe --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsoleEntry:
    """One thing the page reported: console calls, uncaught exceptions, browser log entries."""

    level: str  # "error", "warning", "exception", "info", ...
    text: str
    source: str  # "console", "exception" or the Log domain's source ("network", ...)


class Browser:
    """One Chromium process in a namespace, driven over the DevTools pipe.

    Use ``async with await Browser.launch(...) as browser`` or call :meth:`aclose` (idempotent):
    it closes Chromium politely, then kills its whole process group.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        read_transport: asyncio.ReadTransport,
        write_transport: asyncio.WriteTransport,
        log_path: Path,
    ) -> None:
        self._proc = proc
        self._reader = reader
        self._read_transport = read_transport
        self._write_transport = write_transport
        self.log_path = log_path
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._closed = False
        self._dead: str | None = None
        self._read_task = asyncio.create_task(self._read_loop(), name="cdp-reader")

    @classmethod
    async def launch(
        cls,
        *,
        netns: str,
        user_data_dir: Path,
        secure_origin: str | None = None,
        extra_flags: Sequence[str] = (),
    ) -> Browser:
        """Start Chromium in ``netns``; ``secure_origin`` (http://ADDR:PORT) may getUserMedia."""
        if shutil.which(CHROMIUM) is None:
            raise ChromiumError(
                "chromium is not installed (Debian: apt-get install chromium chromium-driver)"
            )
        await asyncio.to_thread(user_data_dir.mkdir, parents=True, exist_ok=True)
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe"]
        if secure_origin is not None:
            flags.append(f"--unsafely-treat-insecure-origin-as-secure={secure_origin}")
        flags.extend(extra_flags)
        # Chromium wants its pipe at fds 3 and 4 exactly: park our ends above 10 (so they cannot
        # collide with 3 or 4) and let the shell move them into place just before exec.
        cmd_r, cmd_w = os.pipe()
        resp_r, resp_w = os.pipe()
        child_r = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(resp_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(resp_w)
        script = f'exec "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        log_path = user_data_dir.parent / f"{user_data_dir.name}.log"
        loop = asyncio.get_running_loop()
        try:
            log_file = await asyncio.to_thread(open, log_path, "wb")
            with log_file:
                proc = await asyncio.create_subprocess_exec(
                    "bash",  # dash cannot redirect fds above 9
                    "-c",
                    script,
                    "bash",
                    "ip",
                    "netns",
                    "exec",
                    netns,
                    CHROMIUM,
                    *flags,
                    "about:blank",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(child_r, child_w),
                    start_new_session=True,  # its own process group: killed as a whole
                )
        except BaseException:
            for fd in (child_r, child_w, cmd_w, resp_r):
                os.close(fd)
            raise
        os.close(child_r)
        os.close(child_w)
        reader = asyncio.StreamReader(limit=256 * 1024 * 1024, loop=loop)  # screenshots are big
        resp_file, cmd_file = os.fdopen(resp_r, "rb", 0), os.fdopen(cmd_w, "wb", 0)
        try:
            read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), resp_file
            )
            write_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, cmd_file)
        except BaseException:  # Chromium is running: nothing else would stop it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            resp_file.close()
            cmd_file.close()
            raise
        browser = cls(proc, reader, read_transport, write_transport, log_path)
        try:
            await browser.send("Browser.getVersion", timeout_s=30.0)
        except BaseException:
            await browser.aclose()
            raise
        return browser

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """Send one DevTools command and return its ``result``."""
        if self._dead is not None:
            raise ChromiumError(f"{method}: {self._dead}")
        message: dict[str, Any] = {"id": next(self._ids), "method": method}
        if params:
            message["params"] = params
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        try:
            self._write_transport.write(json.dumps(message).encode() + b"\0")
            async with asyncio.timeout(timeout_s):
                reply = await future
        except TimeoutError:
            raise ChromiumError(f"{method}: no reply within {timeout_s} s") from None
        finally:
            self._pending.pop(message["id"], None)
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error'].get('message', reply['error'])}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def _read_loop(self) -> None:
        try:
            while True:
                raw = await self._reader.readuntil(b"\0")
                message = json.loads(raw[:-1])
                if "id" in message:
                    future = self._pending.get(message["id"])
                    if future is not None and not future.done():
                        future.set_result(message)
                elif (page := self._pages.get(message.get("sessionId", ""))) is not None:
                    page._on_event(message["method"], message.get("params", {}))
        except asyncio.IncompleteReadError:
            self._dead = "Chromium closed its DevTools pipe (exited?)\n" + self._log_tail()
        except (ValueError, asyncio.LimitOverrunError) as exc:  # bad JSON, an oversized message
            self._dead = f"unreadable DevTools message: {type(exc).__name__}: {exc}"
        finally:
            if self._dead is None:
                self._dead = "the browser was closed"
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ChromiumError(self._dead))

    async def open(self, url: str, *, timeout_s: float = 30.0) -> Page:
        """A new tab (its own window, so it counts as visible) showing ``url``, loaded."""
        target = await self.send("Target.createTarget", {"url": "about:blank", "newWindow": True})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, target["targetId"], attached["sessionId"])
        self._pages[page.session_id] = page
        for domain in ("Runtime", "Log", "Page"):
            await page.send(f"{domain}.enable")
        await page.send("Page.navigate", {"url": url})
        await page.wait_for("document.readyState === 'complete'", timeout_s=timeout_s)
        return page

    async def aclose(self) -> None:
        """Close Chromium (politely, then by killing its process group); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._dead is None:
            with contextlib.suppress(ChromiumError):
                await self.send("Browser.close", timeout_s=5.0)
        try:
            async with asyncio.timeout(5.0):
                await self._proc.wait()
        except TimeoutError:
            log.warning("chromium did not exit after Browser.close; killing it")
        # Renderers and utilities share the group: make sure none survives its browser.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        await self._proc.wait()
        self._write_transport.close()
        self._read_transport.close()
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task


class Page:
    """One tab. Collects what the page logs; evaluates JavaScript; polls conditions."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self._browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.console: list[ConsoleEntry] = []

    @property
    def errors(self) -> list[ConsoleEntry]:
        """Console errors, failed asserts, uncaught exceptions, and browser log errors (404s)."""
        return [entry for entry in self.console if entry.level in ERROR_LEVELS]

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        return await self._browser.send(
            method, params, session_id=self.session_id, timeout_s=timeout_s
        )

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_describe(arg) for arg in params.get("args", []))
            self.console.append(ConsoleEntry(params.get("type", "log"), text, "console"))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = _describe(details.get("exception", {})) or details.get("text", "")
            self.console.append(ConsoleEntry("exception", text, "exception"))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            text = f"{entry.get('text', '')} {entry.get('url', '')}".strip()
            self.console.append(
                ConsoleEntry(entry.get("level", "info"), text, entry.get("source", "other"))
            )

    async def evaluate(
        self, expression: str, *, await_promise: bool = True, timeout_s: float = 30.0
    ) -> Any:
        """The JSON value of ``expression`` (awaited if it is a promise); throws JavaScriptError."""
        result = await self.send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "awaitPromise": await_promise,
                "returnByValue": True,
                "userGesture": True,
            },
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = _describe(details.get("exception", {})) or details.get("text", "")
            raise JavaScriptError(f"{expression!r} threw: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, timeout_s: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy and return its value; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while True:
            try:
                last = await self.evaluate(expression, timeout_s=max(1.0, timeout_s))
            except JavaScriptError as exc:  # e.g. the page's module has not loaded yet
                last = exc
            else:
                if last:
                    return last
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{expression!r} still not true after {timeout_s} s (last: {last!r}); "
                    f"console: {self.console[-10:]}"
                )
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        """A PNG of the tab's viewport."""
        await self.send("Page.bringToFront")
        result = await self.send("Page.captureScreenshot", {"format": "png"})
        return base64.b64decode(result["data"])

    async def close(self) -> None:
        await self._browser.send("Target.closeTarget", {"targetId": self.target_id})


def _describe(remote: dict[str, Any]) -> str:
    """A readable string for a CDP RemoteObject."""
    if "value" in remote:
        value = remote["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(remote.get("description") or remote.get("unserializableValue") or "")
