"""A call as the participant sees it: the relay's latest ``CallInfo`` plus the commands it allows.

The relay owns the call state machine; a :class:`Call` only mirrors it (every ``call_state`` the
relay sends replaces ``info``) and sends commands, whose refusals come back as
:class:`~peer.errors.ServerError` with the protocol's ``ErrorCode``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from signaling_server.protocol import (
    AcceptCall,
    CallInfo,
    CallState,
    CallStatus,
    DeclineCall,
    EndCall,
    EndReason,
    LeaveCall,
)

Command = AcceptCall | DeclineCall | LeaveCall | EndCall
#: Sends a command with an ``id`` and returns the relay's reply (or raises ServerError).
Requester = Callable[[Command], Awaitable[Any]]


class Call:
    """One call this participant started or was invited to."""

    def __init__(self, info: CallInfo, *, request: Requester, local_peer_id: str) -> None:
        self.info = info
        self._request = request
        self._me = local_peer_id
        self._states: asyncio.Queue[CallState | None] = asyncio.Queue()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"Call({self.call_id} {self.status} participants={self.participants})"

    # ------------------------------------------------------------------ state

    @property
    def call_id(self) -> str:
        return self.info.call_id

    @property
    def status(self) -> CallStatus:
        return self.info.status

    @property
    def participants(self) -> list[str]:
        return list(self.info.participants)

    @property
    def started_by(self) -> str:
        return self.info.started_by

    @property
    def reason(self) -> EndReason | None:
        return self.info.reason

    @property
    def incoming(self) -> bool:
        """True if somebody else started it and we are one of its targets."""
        return self.info.started_by != self._me and self._me in self.info.targets

    @property
    def joined(self) -> bool:
        """True while we are one of its participants (and it has not ended)."""
        return self.status is not CallStatus.ENDED and self._me in self.info.participants

    def _apply(self, state: CallState) -> None:
        if self.info.status is CallStatus.ENDED:
            return  # terminal: a late duplicate must not resurrect it
        self.info = state.call
        self._states.put_nowait(state)
        if state.call.status is CallStatus.ENDED:
            self._states.put_nowait(None)
        self._changed.set()

    async def updates(self) -> AsyncIterator[CallState]:
        """Every ``call_state`` from now on, ending after the one that ends the call."""
        while True:
            state = await self._states.get()
            if state is None:
                self._states.put_nowait(None)
                return
            yield state

    async def wait_for(self, *statuses: CallStatus, timeout_s: float | None = 30.0) -> CallInfo:
        """Wait until the call is in one of ``statuses``; returns its info."""
        async with asyncio.timeout(timeout_s):
            while self.status not in statuses:
                if self.status is CallStatus.ENDED:
                    raise CallEndedError(self.info)
                self._changed.clear()
                await self._changed.wait()
        return self.info

    async def wait_ended(self, *, timeout_s: float | None = 30.0) -> CallInfo:
        return await self.wait_for(CallStatus.ENDED, timeout_s=timeout_s)

    async def wait_until(
        self, predicate: Callable[[CallInfo], bool], *, timeout_s: float | None = 30.0
    ) -> CallInfo:
        """Wait until ``predicate(info)`` holds (checked on every change)."""
        async with asyncio.timeout(timeout_s):
            while not predicate(self.info):
                self._changed.clear()
                await self._changed.wait()
        return self.info

    async def wait_alone_or_ended(self, *, timeout_s: float | None = None) -> CallInfo:
        """Wait until everyone else has left an answered call we are in, or it ended.

        The relay keeps a call active while one participant remains (it ends ``last_left`` when
        that one leaves too); a bot uses this to hang up when the conversation is over.
        """
        return await self.wait_until(
            lambda info: (
                info.status is CallStatus.ENDED
                or (info.answered_at is not None and info.participants == [self._me])
            ),
            timeout_s=timeout_s,
        )

    # ------------------------------------------------------------------ commands

    async def accept(self) -> CallInfo:
        return await self._command(AcceptCall(call_id=self.call_id))

    async def decline(self) -> CallInfo:
        return await self._command(DeclineCall(call_id=self.call_id))

    async def leave(self) -> CallInfo:
        return await self._command(LeaveCall(call_id=self.call_id))

    async def end(self) -> CallInfo:
        return await self._command(EndCall(call_id=self.call_id))

    async def _command(self, command: Command) -> CallInfo:
        # The participant's observer has applied the reply (and anything before it) by now.
        await self._request(command)
        return self.info


class CallEndedError(Exception):
    """Waited for a state the call can no longer reach."""

    def __init__(self, info: CallInfo) -> None:
        super().__init__(f"call {info.call_id} ended ({info.reason})")
        self.info = info


__all__ = ["Call", "CallEndedError"]
