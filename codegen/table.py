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
"""

from .model import Constant, ConstantGroup, build_table

ENTRIES = (
    ("sr", "log",
     [("uint32_t", "level"), ("uint32_t", "errnoval"),
      ("STRING", "context"), ("STRING", "formatted")],
     {"doc": "A xentoollog message (level, errno or -1, context, text)."}),
    ("sr", "progress",
     [("STRING", "context"), ("STRING", "doing_what"),
      ("unsigned long", "done"), ("unsigned long", "total")],
     {"doc": "A xentoollog progress report."}),
    ("srcxA", "suspend", [],
     {"doc": "Suspend the guest; reply nonzero on success (save)."}),
    ("srcxA", "postcopy", [],
     {"doc": "Resume the guest after a checkpoint was copied."}),
    ("srcxA", "checkpoint", [],
     {"doc": "A checkpoint ended; reply whether to take another."}),
    ("srcxA", "wait_checkpoint", [],
     {"doc": "Wait for the next checkpoint (COLO)."}),
    ("scxA", "switch_qemu_logdirty",
     [("uint32_t", "domid"), ("unsigned", "enable")],
     {"doc": "Turn QEMU's log-dirty mode on or off (HVM); reply 0 on success."}),
    ("rcxW", "static_data_done", [("unsigned", "missing")],
     {"doc": "Static data received; missing = XGR_SDD_MISSING_* bits."}),
    ("rcx", "restore_results",
     [("xen_pfn_t", "store_gfn"), ("xen_pfn_t", "console_gfn")],
     {"doc": "The restored domain's xenstore and console frames."}),
    ("srW", "complete", [("int", "retval"), ("int", "errnoval")],
     {"doc": "The libxc call returned; the helper exits after the reply."}),
    # xensr extensions start here.
    ("scxW", "precopy_policy",
     [("unsigned", "iteration"), ("unsigned long", "total_written"),
      ("long", "dirty_count")],
     {"libxc_struct": "precopy_stats", "extension": True,
      "doc": "Live-migration progress; reply an XGS_POLICY_* decision."}),
)

GROUPS = (
    ConstantGroup("xtl_level", "xentoollog levels (xentoollog.h)", (
        Constant("XTL_NONE", 0), Constant("XTL_DEBUG", 1),
        Constant("XTL_VERBOSE", 2), Constant("XTL_DETAIL", 3),
        Constant("XTL_PROGRESS", 4), Constant("XTL_INFO", 5),
        Constant("XTL_NOTICE", 6), Constant("XTL_WARN", 7),
        Constant("XTL_ERROR", 8), Constant("XTL_CRITICAL", 9),
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
