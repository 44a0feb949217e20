"""The reply mapping: one implementation, in the callout, driven by the table."""

import pytest

import xensr
from xensr import _constants as C
from xensr import _xc
from xensr import callbacks as cb


@pytest.mark.parametrize("name,value,reply", [
    ("suspend", True, 1), ("suspend", False, 0), ("suspend", 2, 2),
    ("checkpoint", xensr.CheckpointResult.FAILOVER, 2),
    ("switch_qemu_logdirty", None, 0), ("switch_qemu_logdirty", True, 0),
    ("switch_qemu_logdirty", False, -1), ("switch_qemu_logdirty", -5, -5),
    ("static_data_done", None, 0),
    ("precopy_policy", xensr.PrecopyDecision.STOP_AND_COPY, 1),
    ("precopy_policy", -1, -1),
    ("suspend", (1 << 31) - 1, (1 << 31) - 1), ("suspend", -(1 << 31), -(1 << 31)),
])
def test_mapped_values(name, value, reply):
    assert _xc.map_reply(C.MESSAGES_BY_NAME[name].number, value) == reply
    assert cb.reply_value(name, value) == reply


@pytest.mark.parametrize("name,value,error,text", [
    ("suspend", None, TypeError, "suspend() must return a bool, not NoneType"),
    ("suspend", "yes", TypeError, "must return a bool, not str"),
    ("static_data_done", 1.5, TypeError, "must return None or a bool, not float"),
    ("precopy_policy", True, TypeError, "must return an XGS_POLICY_* int, not bool"),
    ("precopy_policy", None, TypeError, "must return an XGS_POLICY_* int"),
    ("precopy_policy", 2, ValueError, "returned 2, not an XGS_POLICY_* value"),
    ("precopy_policy", 1 << 70, ValueError, "not an XGS_POLICY_* value"),
    # An int beyond a C int is refused before anything is sent.
    ("suspend", 1 << 40, ValueError, "does not fit the helper's reply"),
    ("suspend", 1 << 31, ValueError, "does not fit the helper's reply"),
    ("switch_qemu_logdirty", -(1 << 31) - 1, ValueError, "does not fit"),
    ("complete", 0, ValueError, "takes no reply"),
])
def test_refused_values(name, value, error, text):
    with pytest.raises(error) as info:
        cb.reply_value(name, value)
    assert text in str(info.value)


def test_failure_replies_come_from_the_table():
    assert {n: cb.failure_reply(n) for n in ("suspend", "switch_qemu_logdirty",
                                              "precopy_policy")} == {
        "suspend": 0, "switch_qemu_logdirty": -1,
        "precopy_policy": C.XGS_POLICY_ABORT}
