"""The voicemail telephone user interface (TUI) as a sans-I/O state machine.

Driven by key presses (``digit(d, now)``), the end of a prompt
(``played(now)``) and the clock (``handle_timer(now)`` at ``next_timer()``);
it answers with :class:`Action` objects the call carries out (play prompts,
record, delete or save a message, change the PIN, hang up). Transitions are
one (state, input) table, :data:`TRANSITIONS`.

Deposit: the greeting and a beep, then recording until ``#``, the caller
hangs up, or ``max-message-length``. Retrieval (access number): the PIN
ended by ``#`` (or a pause), three tries; then the main menu:

====  =========================================
key   action
====  =========================================
1     listen to the current message (new first)
6     next message
7     delete the current message
9     save the current message
3     record a new greeting, ``#`` ends it
5     change the PIN: new PIN then ``#``
\\*    repeat the menu
0     goodbye
====  =========================================

A message heard to its end is saved (it is no longer new, so MWI clears).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "TRANSITIONS",
    "Action",
    "ChangePin",
    "DeleteMessage",
    "Hangup",
    "IvrMenu",
    "IvrState",
    "Mode",
    "PinChecked",
    "Play",
    "SaveMessage",
    "StartRecording",
    "StopRecording",
]


class Mode(enum.Enum):
    DEPOSIT = "deposit"
    RETRIEVE = "retrieve"


class IvrState(enum.Enum):
    GREETING = "greeting"            # deposit: greeting and beep playing
    RECORDING = "recording"          # deposit: the caller's message
    PIN = "pin"                      # retrieval: collecting the PIN
    MENU = "menu"                    # main menu (prompt playing or waiting)
    PLAYING = "playing"              # a message playing
    GREETING_PROMPT = "greeting_prompt"  # "record your greeting after the beep"
    RECORD_GREETING = "record_greeting"
    NEW_PIN = "new_pin"
    GOODBYE = "goodbye"              # goodbye playing, then hang up
    DONE = "done"


class Input(enum.Enum):
    DIGIT = "digit"
    PLAYED = "played"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Play:
    """Play these prompts in turn (names, or ``message:ID``), replacing what plays."""

    prompts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StartRecording:
    what: str  # "message" or "greeting"


@dataclass(frozen=True, slots=True)
class StopRecording:
    keep: bool


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    message_id: str


@dataclass(frozen=True, slots=True)
class SaveMessage:
    message_id: str


@dataclass(frozen=True, slots=True)
class ChangePin:
    pin: str


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class PinChecked:
    """A PIN was entered: right or wrong (the service counts wrong ones)."""

    ok: bool


Action = (Play | StartRecording | StopRecording | DeleteMessage | SaveMessage | ChangePin
          | Hangup | PinChecked)

PIN_ATTEMPTS = 3
MIN_PIN, MAX_PIN = 4, 12


def count_prompts(n: int) -> tuple[str, ...]:
    """"You have N messages": the intro, one pip per message (up to 9), the outro."""
    if n == 0:
        return ("no_messages",)
    return ("you_have", *(["pip"] * min(n, 9)), "messages")


class IvrMenu:
    """One call's TUI (see module doc). ``messages`` are the mailbox's message
    ids, new ones first; ``pin`` the mailbox PIN (retrieval only)."""

    def __init__(self, mode: Mode, now: float, *, pin: str = "",
                 messages: Sequence[str] = (), max_record: float = 120.0,
                 digit_timeout: float = 5.0, idle_timeout: float = 30.0) -> None:
        self.mode = mode
        self.pin = pin
        self.messages = list(messages)
        self.current = 0
        self.max_record = max_record
        self.digit_timeout = digit_timeout
        self.idle_timeout = idle_timeout
        self.entered = ""
        self.attempts = PIN_ATTEMPTS
        self.authenticated = False
        self._timer: float | None = None
        self._actions: list[Action] = []
        if mode is Mode.DEPOSIT:
            self.state = IvrState.GREETING
            self._emit(Play(("greeting", "beep")))
        else:
            self.state = IvrState.PIN
            self._emit(Play(("enter_pin",)))
            self._timer = now + idle_timeout

    # ---------------------------------------------------------------- driving
    def digit(self, digit: str, now: float) -> None:
        self._input(Input.DIGIT, now, digit)

    def played(self, now: float) -> None:
        self._input(Input.PLAYED, now, "")

    def handle_timer(self, now: float) -> None:
        if self._timer is not None and now >= self._timer:
            self._timer = None
            self._input(Input.TIMEOUT, now, "")

    def next_timer(self) -> float | None:
        return self._timer

    def actions(self) -> list[Action]:
        """What the call must do now, in order (cleared by reading)."""
        out, self._actions = self._actions, []
        return out

    def _input(self, kind: Input, now: float, digit: str) -> None:
        handler = TRANSITIONS.get((self.state, kind))
        if handler is not None:
            handler(self, now, digit)

    def _emit(self, action: Action) -> None:
        self._actions.append(action)

    def _goodbye(self) -> None:
        self.state = IvrState.GOODBYE
        self._timer = None
        self._emit(Play(("goodbye",)))

    # ---------------------------------------------------------------- deposit
    def _greeting_played(self, now: float, _: str) -> None:
        self.state = IvrState.RECORDING
        self._timer = now + self.max_record
        self._emit(StartRecording("message"))

    def _greeting_digit(self, now: float, digit: str) -> None:
        if digit == "#":  # skip the greeting
            self._greeting_played(now, digit)

    def _recording_digit(self, now: float, digit: str) -> None:
        if digit == "#":
            self._emit(StopRecording(keep=True))
            self._goodbye()

    def _recording_timeout(self, now: float, _: str) -> None:
        self._emit(StopRecording(keep=True))
        self._goodbye()

    # ---------------------------------------------------------------- PIN
    def _pin_digit(self, now: float, digit: str) -> None:
        if digit == "#":
            self._check_pin(now)
            return
        if len(self.entered) < MAX_PIN:
            self.entered += digit
        self._timer = now + self.digit_timeout

    def _pin_timeout(self, now: float, _: str) -> None:
        if self.entered:
            self._check_pin(now)
        else:
            self._goodbye()

    def _check_pin(self, now: float) -> None:
        entered, self.entered = self.entered, ""
        ok = bool(self.pin) and secrets.compare_digest(entered, self.pin)
        self._emit(PinChecked(ok))
        if ok:
            self.authenticated = True
            self.state = IvrState.MENU
            self._timer = now + self.idle_timeout
            self._emit(Play((*count_prompts(len(self.messages)), "menu")))
            return
        self.attempts -= 1
        if self.attempts <= 0:
            self._emit(Play(("pin_wrong",)))
            self._goodbye()
            return
        self._timer = now + self.idle_timeout
        self._emit(Play(("pin_wrong", "enter_pin")))

    # ---------------------------------------------------------------- menu
    def _menu(self, now: float, *prompts: str) -> None:
        self.state = IvrState.MENU
        self._timer = now + self.idle_timeout
        self._emit(Play((*prompts, "menu")))

    def _current(self) -> str | None:
        if 0 <= self.current < len(self.messages):
            return self.messages[self.current]
        return None

    def _menu_digit(self, now: float, digit: str) -> None:
        action = _MENU_KEYS.get(digit)
        if action is not None:
            action(self, now)

    def _listen(self, now: float) -> None:
        message = self._current()
        if message is None:
            self._menu(now, "no_messages")
            return
        self.state = IvrState.PLAYING
        self._timer = None
        self._emit(Play((f"message:{message}",)))

    def _next(self, now: float) -> None:
        if self.current + 1 < len(self.messages):
            self.current += 1
            self._listen(now)
        else:
            self._menu(now, "no_more_messages")

    def _delete(self, now: float) -> None:
        message = self._current()
        if message is None:
            self._menu(now, "no_messages")
            return
        self._emit(DeleteMessage(message))
        del self.messages[self.current]
        # the next message becomes current; after the last one, the one before it
        self.current = min(self.current, max(len(self.messages) - 1, 0))
        self._menu(now, "message_deleted")

    def _save(self, now: float) -> None:
        message = self._current()
        if message is None:
            self._menu(now, "no_messages")
            return
        self._emit(SaveMessage(message))
        self._menu(now, "message_saved")

    def _record_greeting(self, now: float) -> None:
        self.state = IvrState.GREETING_PROMPT
        self._timer = None
        self._emit(Play(("record_greeting", "beep")))

    def _change_pin(self, now: float) -> None:
        self.state = IvrState.NEW_PIN
        self.entered = ""
        self._timer = now + self.idle_timeout
        self._emit(Play(("enter_new_pin",)))

    def _repeat(self, now: float) -> None:
        self._menu(now)

    def _quit(self, now: float) -> None:
        self._goodbye()

    def _menu_timeout(self, now: float, _: str) -> None:
        self._goodbye()

    def _message_played(self, now: float, _: str) -> None:
        message = self._current()
        if message is not None:
            self._emit(SaveMessage(message))
        self._menu(now)

    def _playing_digit(self, now: float, digit: str) -> None:
        if digit in _MENU_KEYS:
            self._menu_digit(now, digit)

    # ---------------------------------------------------------------- greeting, PIN change
    def _greeting_prompt_played(self, now: float, _: str) -> None:
        self.state = IvrState.RECORD_GREETING
        self._timer = now + self.max_record
        self._emit(StartRecording("greeting"))

    def _greeting_recorded(self, now: float, digit: str) -> None:
        if digit == "#":
            self._emit(StopRecording(keep=True))
            self._menu(now, "greeting_saved")

    def _greeting_timeout(self, now: float, _: str) -> None:
        self._emit(StopRecording(keep=True))
        self._menu(now, "greeting_saved")

    def _new_pin_digit(self, now: float, digit: str) -> None:
        if digit != "#":
            if len(self.entered) <= MAX_PIN:
                self.entered += digit
            return
        pin, self.entered = self.entered, ""
        if MIN_PIN <= len(pin) <= MAX_PIN and pin.isdigit():
            self.pin = pin
            self._emit(ChangePin(pin))
            self._menu(now, "pin_changed")
        else:
            self._menu(now, "pin_invalid")

    def _new_pin_timeout(self, now: float, _: str) -> None:
        self.entered = ""
        self._menu(now, "pin_invalid")

    def _goodbye_played(self, now: float, _: str) -> None:
        self.state = IvrState.DONE
        self._emit(Hangup())


_MENU_KEYS: dict[str, Callable[[IvrMenu, float], None]] = {
    "1": IvrMenu._listen,
    "6": IvrMenu._next,
    "7": IvrMenu._delete,
    "9": IvrMenu._save,
    "3": IvrMenu._record_greeting,
    "5": IvrMenu._change_pin,
    "*": IvrMenu._repeat,
    "0": IvrMenu._quit,
}

Handler = Callable[[IvrMenu, float, str], None]

#: (state, input) -> what happens; a pair absent from the table is ignored
TRANSITIONS: dict[tuple[IvrState, Input], Handler] = {
    (IvrState.GREETING, Input.PLAYED): IvrMenu._greeting_played,
    (IvrState.GREETING, Input.DIGIT): IvrMenu._greeting_digit,
    (IvrState.RECORDING, Input.DIGIT): IvrMenu._recording_digit,
    (IvrState.RECORDING, Input.TIMEOUT): IvrMenu._recording_timeout,
    (IvrState.PIN, Input.DIGIT): IvrMenu._pin_digit,
    (IvrState.PIN, Input.TIMEOUT): IvrMenu._pin_timeout,
    (IvrState.MENU, Input.DIGIT): IvrMenu._menu_digit,
    (IvrState.MENU, Input.TIMEOUT): IvrMenu._menu_timeout,
    (IvrState.PLAYING, Input.PLAYED): IvrMenu._message_played,
    (IvrState.PLAYING, Input.DIGIT): IvrMenu._playing_digit,
    (IvrState.GREETING_PROMPT, Input.PLAYED): IvrMenu._greeting_prompt_played,
    (IvrState.RECORD_GREETING, Input.DIGIT): IvrMenu._greeting_recorded,
    (IvrState.RECORD_GREETING, Input.TIMEOUT): IvrMenu._greeting_timeout,
    (IvrState.NEW_PIN, Input.DIGIT): IvrMenu._new_pin_digit,
    (IvrState.NEW_PIN, Input.TIMEOUT): IvrMenu._new_pin_timeout,
    (IvrState.GOODBYE, Input.PLAYED): IvrMenu._goodbye_played,
}
