"""A call as the participant sees it: the relay's latest ``CallInfo`` plus the commands it allows.

The relay owns the call state machine; a :class:`Call` only mirrors it (every ``call_state`` the
relay sends replaces ``info``) and sends commands, whose refusals come back as
:class:`~peer.errors.ServerError` with the protocol's ``ErrorCode``.

One thing the participant decides on its own: a call it can no longer be part of after losing
the relay (the relay restarted and forgot it, or we came back as a new peer) ends locally with
reason ``relay_restart``, since no ``call_state`` about it will ever come. Its waits then return
instead of waiting for ever; they raise :class:`~peer.errors.CallbotError` once the participant
is closed or has lost the relay for good.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from signaling_server.protocol import (
    AcceptCall,
    CallEvent,
    CallInfo,
    CallState,
    CallStatus,
    DeclineCall,
    EndCall,
    EndReason,
    LeaveCall,
)

from .errors import CallbotError, CallEndedError, WaitTimeout

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
        self._abandoned: str | None = None  # why nothing more can be known about it

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

    def _holds_us(self) -> bool:
        """Does the call still count on us: we are in it, or it is still ringing us?"""
        info = self.info
        if info.status is CallStatus.ENDED:
            return False
        ringing_us = (
            info.status is CallStatus.RINGING
            and self._me in info.targets
            and self._me not in info.declined_by
        )
        return self._me in info.participants or ringing_us

    def _apply(self, state: CallState) -> None:
        if self.info.status is CallStatus.ENDED:
            return  # terminal: a late duplicate must not resurrect it
        self.info = state.call
        self._states.put_nowait(state)
        if state.call.status is CallStatus.ENDED:
            self._states.put_nowait(None)
        self._changed.set()

    def _end_locally(self, reason: EndReason) -> None:
        """End our mirror of a call no ``call_state`` will ever end (see the module doc): dated
        now, lasting from its answer until now, listing everyone we knew took part."""
        info = self.info
        if info.status is CallStatus.ENDED:
            return
        now = max(time.time(), info.answered_at or info.started_at)
        ended = dataclasses.replace(
            info,
            status=CallStatus.ENDED,
            participants=list(dict.fromkeys([info.started_by, *info.participants])),
            ended_at=now,
            reason=reason,
            duration_s=0.0 if info.answered_at is None else now - info.answered_at,
        )
        self._apply(CallState(event=CallEvent.CALL_ENDED, call=ended))

    def _abandon(self, why: str) -> None:
        """Nothing more will be learnt about this call (the participant closed, or lost the
        relay for good): waits raise ``CallbotError(why)``, ``updates()`` ends."""
        if self._abandoned is None and self.info.status is not CallStatus.ENDED:
            self._abandoned = why
            self._states.put_nowait(None)
            self._changed.set()

    async def updates(self) -> AsyncIterator[CallState]:
        """Every ``call_state`` from now on, ending after the one that ends the call (or when
        the participant closes)."""
        while True:
            state = await self._states.get()
            if state is None:
                self._states.put_nowait(None)
                return
            yield state

    async def wait_for(self, *statuses: CallStatus, timeout_s: float | None = 30.0) -> CallInfo:
        """Wait until the call is in one of ``statuses``; returns its info.

        Raises :class:`CallEndedError` if it ends first, :class:`WaitTimeout` when time runs
        out, :class:`CallbotError` if the participant closes or loses the relay for good.
        """
        wanted = "/".join(statuses)
        return await self._wait(lambda info: info.status in statuses, wanted, timeout_s, True)

    async def wait_ended(self, *, timeout_s: float | None = 30.0) -> CallInfo:
        return await self.wait_for(CallStatus.ENDED, timeout_s=timeout_s)

    async def wait_until(
        self, predicate: Callable[[CallInfo], bool], *, timeout_s: float | None = 30.0
    ) -> CallInfo:
        """Wait until ``predicate(info)`` holds (checked on every change); ``WaitTimeout``."""
        return await self._wait(predicate, "the condition", timeout_s, False)

    async def wait_alone_or_ended(self, *, timeout_s: float | None = None) -> CallInfo:
        """Wait until everyone else has left an answered call we are in, or it ended, or it
        went on without us (we lost our place in it).

        The relay keeps a call active while one participant remains (it ends ``last_left`` when
        that one leaves too); a bot uses this to hang up when the conversation is over.
        """
        return await self.wait_until(
            lambda info: (
                info.status is CallStatus.ENDED
                or (
                    info.answered_at is not None
                    and (info.participants == [self._me] or self._me not in info.participants)
                )
            ),
            timeout_s=timeout_s,
        )

    async def _wait(
        self,
        done: Callable[[CallInfo], bool],
        what: str,
        timeout_s: float | None,
        end_is_final: bool,
    ) -> CallInfo:
        try:
            async with asyncio.timeout(timeout_s):
                while not done(self.info):
                    if end_is_final and self.status is CallStatus.ENDED:
                        raise CallEndedError(self.info)
                    if self._abandoned is not None:
                        raise CallbotError(f"call {self.call_id}: {self._abandoned}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise WaitTimeout(
                f"call {self.call_id} is {self.status}: {what} did not happen within "
                f"{timeout_s:g} s"
            ) from None
        return self.info

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


__all__ = ["Call", "CallEndedError"]
