"""The TUI state machine, driven by digits and a fake clock."""

from daemons.feature_server.voicemail.ivr import (
    ChangePin,
    DeleteMessage,
    Hangup,
    IvrMenu,
    IvrState,
    Mode,
    PinChecked,
    Play,
    SaveMessage,
    StartRecording,
    StopRecording,
)


def keys(menu: IvrMenu, digits: str, now: float = 0.0) -> list:
    out = []
    for d in digits:
        menu.digit(d, now)
        out += menu.actions()
    return out


def test_deposit_greeting_record_hash_goodbye() -> None:
    menu = IvrMenu(Mode.DEPOSIT, 0.0, max_record=60)
    assert menu.actions() == [Play(("greeting", "beep"))]
    menu.played(2.0)
    assert menu.actions() == [StartRecording("message")]
    assert menu.next_timer() == 62.0
    assert keys(menu, "#", 10.0) == [StopRecording(keep=True), Play(("goodbye",))]
    menu.played(11.0)
    assert menu.actions() == [Hangup()] and menu.state is IvrState.DONE


def test_deposit_stops_at_the_maximum_length() -> None:
    menu = IvrMenu(Mode.DEPOSIT, 0.0, max_record=30)
    menu.actions()
    menu.played(1.0)
    menu.actions()
    menu.handle_timer(30.9)
    assert menu.actions() == []
    menu.handle_timer(31.0)
    assert menu.actions() == [StopRecording(keep=True), Play(("goodbye",))]


def test_pin_then_menu_listen_save_delete() -> None:
    menu = IvrMenu(Mode.RETRIEVE, 0.0, pin="1234", messages=["a", "b"])
    assert menu.actions() == [Play(("enter_pin",))]
    assert keys(menu, "1234#") == [PinChecked(True),
                                   Play(("you_have", "pip", "pip", "messages", "menu"))]
    assert keys(menu, "1") == [Play(("message:a",))]
    menu.played(5.0)
    assert menu.actions() == [SaveMessage("a"), Play(("menu",))]
    assert keys(menu, "6") == [Play(("message:b",))]
    assert keys(menu, "7") == [DeleteMessage("b"), Play(("message_deleted", "menu"))]
    assert keys(menu, "9") == [SaveMessage("a"), Play(("message_saved", "menu"))]
    assert keys(menu, "6") == [Play(("no_more_messages", "menu"))]
    assert keys(menu, "0") == [Play(("goodbye",))]


def test_pin_by_pause_and_three_failures() -> None:
    menu = IvrMenu(Mode.RETRIEVE, 0.0, pin="1234", digit_timeout=5)
    menu.actions()
    keys(menu, "12", 1.0)
    assert menu.next_timer() == 6.0
    menu.handle_timer(6.0)                       # a pause ends the PIN
    assert menu.actions() == [PinChecked(False), Play(("pin_wrong", "enter_pin"))]
    keys(menu, "0000#")
    assert keys(menu, "1111#") == [PinChecked(False), Play(("pin_wrong",)),
                                   Play(("goodbye",))]
    assert menu.state is IvrState.GOODBYE and not menu.authenticated


def test_digits_before_the_pin_is_checked_do_nothing_else() -> None:
    menu = IvrMenu(Mode.RETRIEVE, 0.0, pin="1234", messages=["a"])
    menu.actions()
    assert keys(menu, "7") == []                 # not a delete: still collecting the PIN
    assert keys(menu, "#") == [PinChecked(False), Play(("pin_wrong", "enter_pin"))]


def test_change_pin_and_record_greeting() -> None:
    menu = IvrMenu(Mode.RETRIEVE, 0.0, pin="1234")
    menu.actions()
    keys(menu, "1234#")
    assert keys(menu, "5") == [Play(("enter_new_pin",))]
    assert keys(menu, "12#") == [Play(("pin_invalid", "menu"))]
    keys(menu, "5")
    assert keys(menu, "98765#") == [ChangePin("98765"), Play(("pin_changed", "menu"))]
    assert keys(menu, "3") == [Play(("record_greeting", "beep"))]
    menu.played(1.0)
    assert menu.actions() == [StartRecording("greeting")]
    assert keys(menu, "#") == [StopRecording(keep=True), Play(("greeting_saved", "menu"))]


def test_idle_menu_says_goodbye() -> None:
    menu = IvrMenu(Mode.RETRIEVE, 0.0, pin="1234", idle_timeout=30)
    menu.actions()
    keys(menu, "1234#", 1.0)
    assert menu.next_timer() == 31.0
    menu.handle_timer(31.0)
    assert menu.actions() == [Play(("goodbye",))]


def test_pin_guard_locks_after_repeated_failures_and_unlocks_later() -> None:
    from daemons.feature_server.voicemail.pin_guard import PinGuard
    guard = PinGuard(max_failures=3, lock_time=100)
    assert not guard.checked("1002", False, 0.0)
    assert not guard.checked("1002", True, 1.0)            # a right PIN clears the count
    for t in (2.0, 3.0):
        assert not guard.checked("1002", False, t)
    assert guard.checked("1002", False, 4.0)
    assert guard.locked("1002", 103.9) and not guard.locked("1003", 50.0)
    assert not guard.locked("1002", 104.0)                 # lock_time after the last failure
    assert not guard.checked("1002", False, 200.0)         # counting starts again
