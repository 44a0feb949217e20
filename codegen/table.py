"""The xensr message table: the single source of truth for the protocol.

Messages 1 to 10 are Xen 4.17's (libxl ``libxl_save_msgs_gen.pl``), in the
same order, with the same flags and argument types; numbers are implicit,
from 1, in table order.  Messages after 10 are xensr extensions: a helper
sends them only when the parent set their cbflags bit, so a libxl parent,
which never sets unknown bits, never sees them.

Flags: s/r valid when saving/restoring; c dispatched to the toolstack's
callback object; x a libxc callback whose presence travels in cbflags (bit =
message number); W the helper waits for a reply the callback returns;
A the helper waits for a reply the parent may send later.

How the parent handles each message (xensr's side, libxl's where it has
one): ``role`` (log, progress, request, results, complete; default
request for a callback that waits, results for one that does not);
``reply_map``, how a request's callback return becomes the int reply (bool:
bool -> 1/0; status: None/True -> 0, False -> -1; enum: one of
``reply_group``'s values; an int passes as is); ``failure_reply``, the
reply that makes libxenguest give up once the operation stops;
``default_reply``, the reply when the toolstack has no callback;
``always``, the directions in which the cbflags bit is set whether or not
the toolstack has a callback (libxl: suspend and switch_qemu_logdirty when
saving, static_data_done and restore_results when restoring);
``struct_class``, the callback gets its arguments as one such object;
``bool_args``, arguments the callback gets as bool; ``undo_arg``, an
argument that when 0 makes the request an undo, still passed to the
toolstack while the operation stops.  Replies may name a constant below.
"""

from typing import Any, Dict, List, Sequence, Tuple

from .model import Constant, ConstantGroup, build_table

#: (flags, name, [(type, argument)], {column: value}) per message.
Entry = Tuple[str, str, List[Tuple[str, str]], Dict[str, Any]]

ENTRIES: Sequence[Entry] = (
    ("sr", "log",
     [("uint32_t", "level"), ("uint32_t", "errnoval"),
      ("STRING", "context"), ("STRING", "formatted")],
     {"role": "log",
      "doc": "A xentoollog message (level, errno or -1, context, text)."}),
    ("sr", "progress",
     [("STRING", "context"), ("STRING", "doing_what"),
      ("unsigned long", "done"), ("unsigned long", "total")],
     {"role": "progress", "doc": "A xentoollog progress report."}),
    ("srcxA", "suspend", [],
     {"reply_map": "bool", "failure_reply": 0, "default_reply": 1, "always": "s",
      "doc": "Suspend the guest; reply nonzero on success (save)."}),
    ("srcxA", "postcopy", [],
     {"reply_map": "bool", "failure_reply": 0,
      "doc": "Resume the guest after a checkpoint was copied."}),
    ("srcxA", "checkpoint", [],
     {"reply_map": "bool", "failure_reply": 0,
      "doc": "A checkpoint ended; reply whether to take another."}),
    ("srcxA", "wait_checkpoint", [],
     {"reply_map": "bool", "failure_reply": 0,
      "doc": "Wait for the next checkpoint (COLO)."}),
    ("scxA", "switch_qemu_logdirty",
     [("uint32_t", "domid"), ("unsigned", "enable")],
     {"reply_map": "status", "failure_reply": -1, "default_reply": 0, "always": "s",
      "bool_args": ("enable",), "undo_arg": "enable",
      "doc": "Turn QEMU's log-dirty mode on or off (HVM); reply 0 on success."}),
    ("rcxW", "static_data_done", [("unsigned", "missing")],
     {"reply_map": "status", "failure_reply": -1, "default_reply": 0, "always": "r",
      "doc": "Static data received; missing = XGR_SDD_MISSING_* bits."}),
    ("rcx", "restore_results",
     [("xen_pfn_t", "store_gfn"), ("xen_pfn_t", "console_gfn")],
     {"role": "results", "always": "r",
      "doc": "The restored domain's xenstore and console frames."}),
    ("srW", "complete", [("int", "retval"), ("int", "errnoval")],
     {"role": "complete", "default_reply": 0, "failure_reply": 0,
      "doc": "The libxc call returned; the helper exits after the reply."}),
    # xensr extensions start here.
    ("scxW", "precopy_policy",
     [("unsigned", "iteration"), ("unsigned long", "total_written"),
      ("long", "dirty_count")],
     {"libxc_struct": "precopy_stats", "extension": True,
      "reply_map": "enum", "reply_group": "precopy_policy",
      "failure_reply": "XGS_POLICY_ABORT", "struct_class": "PrecopyStats",
      "doc": "Live-migration progress; reply an XGS_POLICY_* decision."}),
)

GROUPS = (
    ConstantGroup("xtl_level", "xentoollog levels (xentoollog.h)", (
        Constant("XTL_NONE", 0, label="none"),
        Constant("XTL_DEBUG", 1, label="debug"),
        Constant("XTL_VERBOSE", 2, label="verbose"),
        Constant("XTL_DETAIL", 3, label="detail"),
        Constant("XTL_PROGRESS", 4, label="progress"),
        Constant("XTL_INFO", 5, label="info"),
        Constant("XTL_NOTICE", 6, label="notice"),
        Constant("XTL_WARN", 7, label="warning"),
        Constant("XTL_ERROR", 8, label="error"),
        Constant("XTL_CRITICAL", 9, label="critical"),
    )),
    ConstantGroup("xcflags", "xc_domain_save flags", (
        Constant("XCFLAGS_LIVE", 1), Constant("XCFLAGS_DEBUG", 2),
    )),
    ConstantGroup("stream_type", "xc_stream_type_t", (
        Constant("XC_STREAM_PLAIN", 0), Constant("XC_STREAM_REMUS", 1),
        Constant("XC_STREAM_COLO", 2),
    )),
    ConstantGroup("precopy_policy", "precopy_policy replies", (
        Constant("XGS_POLICY_ABORT", -1),
        Constant("XGS_POLICY_CONTINUE_PRECOPY", 0),
        Constant("XGS_POLICY_STOP_AND_COPY", 1),
    )),
    ConstantGroup("checkpoint_restore", "checkpoint replies when restoring", (
        Constant("XGR_CHECKPOINT_ERROR", 0),
        Constant("XGR_CHECKPOINT_SUCCESS", 1),
        Constant("XGR_CHECKPOINT_FAILOVER", 2),
    )),
    ConstantGroup("static_data_missing", "static_data_done missing bits", (
        Constant("XGR_SDD_MISSING_CPUID", 1), Constant("XGR_SDD_MISSING_MSR", 2),
    )),
)

TABLE = build_table(ENTRIES, GROUPS)
