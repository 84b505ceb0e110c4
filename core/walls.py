"""The kernel's walls around one code run: namespaces, uid, no_new_privs, rlimits, Landlock, seccomp.

``core.jail`` forks a process per run and calls :func:`confine` in it before any user code runs.
Each wall here assumes the language wall (``core.sandbox``) has already fallen, so each is raised
with plain system calls (``ctypes`` over libc, no extra dependency) and reports whether it stood:

* ``netns`` -- the jail template moved itself into an empty network namespace (a new user
  namespace too when it is not root), so no socket could reach anything even if one were made;
* ``user`` -- the run has no privilege: a dedicated unprivileged uid/gid when the worker is root,
  the worker's own unprivileged uid otherwise (never root);
* ``no_new_privs`` -- no set-uid binary or file capability can lift it back up;
* ``rlimits`` -- address space, CPU seconds, open files, processes, file size 0, no core dumps;
* ``landlock`` -- reads only beneath the Python installation's library folders, writes nowhere,
  no TCP bind/connect (ABI 4+), no signals or abstract sockets outside itself (ABI 6+);
* ``seccomp`` -- a filter refusing ``socket``/``connect``, ``execve``, ``ptrace``, ``fork``,
  ``mount``, ``unshare``, ``setns``, ``bpf``, ``keyctl``, ``perf_event_open``, signals to any other
  process, and the rest of :data:`DENIED`.

:func:`confine` never raises for a wall the kernel does not offer: it returns what stood, and the
caller (the jail) refuses the run unless weaker isolation was accepted.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import signal
import struct
import sys
import sysconfig
from dataclasses import dataclass, field

REQUIRED = ("fresh_process", "clean_env", "user", "no_new_privs", "rlimits", "landlock", "seccomp")
"""Walls a code run needs unless the operator accepted weaker isolation (``netns`` is a bonus:
seccomp already refuses every socket)."""
ALL_WALLS = (*REQUIRED, "netns")

DEFAULT_JAIL_UID = 64_999
"""The uid/gid code runs take when the worker is root (no account needs to exist for it)."""

_libc = ctypes.CDLL(None, use_errno=True)
if hasattr(_libc, "syscall"):
    _libc.syscall.restype = ctypes.c_long
if hasattr(_libc, "prctl"):  # Linux; elsewhere every wall reports itself down
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000


@dataclass
class WallReport:
    """Which walls stood for one process, and why the others did not."""

    up: dict[str, bool] = field(default_factory=lambda: {name: False for name in ALL_WALLS})
    why: dict[str, str] = field(default_factory=dict)

    def raise_(self, name: str, ok: bool, why: str = "") -> None:
        self.up[name] = ok
        if not ok and why:
            self.why[name] = why

    def missing(self) -> list[str]:
        """Required walls that are down."""
        return [name for name in REQUIRED if not self.up.get(name)]

    def describe_missing(self) -> str:
        return "; ".join(f"{name} ({self.why.get(name, 'not raised')})" for name in self.missing())

    def to_dict(self) -> dict:
        return {"up": dict(self.up), "why": dict(self.why)}

    @classmethod
    def from_dict(cls, data: dict) -> WallReport:
        return cls(up={name: bool(data.get("up", {}).get(name)) for name in ALL_WALLS}, why=dict(data.get("why", {})))


def _errno_text() -> str:
    code = ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


def prctl(option: int, arg: int = 0) -> bool:
    return hasattr(_libc, "prctl") and _libc.prctl(option, arg, 0, 0, 0) == 0


def die_with_parent() -> None:
    """Be killed when the process that started us dies (set after every uid change: it clears it)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# -- namespaces (raised once, in the jail template) ---------------------------------------------------


def enter_empty_network(report: WallReport) -> None:
    """Move this (single-threaded) process into a new, empty network namespace.

    Root can do it directly. Others need a user namespace first, which maps their own uid and gid
    to themselves, so files and processes outside look exactly as before.
    """
    if platform.system() != "Linux" or not hasattr(_libc, "unshare"):
        report.raise_("netns", False, "network namespaces are a Linux feature")
        return
    if _libc.unshare(CLONE_NEWNET) == 0:
        report.raise_("netns", True)
        return
    first = _errno_text()
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        report.raise_("netns", False, f"unshare(CLONE_NEWNET) {first}; with a user namespace {_errno_text()}")
        return
    try:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as handle:
                handle.write(text)
    except OSError as exc:
        report.raise_("netns", False, f"user namespace maps: {exc}")
        return
    report.raise_("netns", True)


_SYS_CLOSE_RANGE = 436  # unified number (Linux 5.9+)


def close_descriptors_from(first: int) -> None:
    """Close every descriptor numbered ``first`` or above, in one system call where the kernel has it."""
    if _libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(0)) == 0:
        return
    for name in os.listdir("/proc/self/fd"):
        if int(name) >= first:
            try:
                os.close(int(name))
            except OSError:
                pass


# -- rlimits -----------------------------------------------------------------------------------------


def address_space_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * resource.getpagesize()


def set_rlimits(report: WallReport, *, memory_bytes: int | None, cpu_seconds: int | None, open_files: int | None,
                processes: int | None) -> None:
    """Hard limits (soft = hard), which an unprivileged process can never raise again."""
    limits = [(resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_CORE, 0)]
    if open_files is not None:
        limits.append((resource.RLIMIT_NOFILE, open_files))
    if cpu_seconds is not None:
        limits.append((resource.RLIMIT_CPU, cpu_seconds))
    if memory_bytes:
        limits.append((resource.RLIMIT_AS, memory_bytes))
    if processes is not None:
        limits.append((resource.RLIMIT_NPROC, processes))
    try:
        for which, value in limits:
            if which == resource.RLIMIT_CPU:
                resource.setrlimit(which, (value, value + 1))  # SIGXCPU first, SIGKILL a second later
            else:
                resource.setrlimit(which, (value, value))
    except (ValueError, OSError) as exc:
        report.raise_("rlimits", False, f"setrlimit: {exc}")
        return
    report.raise_("rlimits", True)


def limit_run(report: WallReport, *, memory_bytes: int | None, cpu_seconds: int) -> None:
    """The limits of one run, once it is known, in a process already walled (limits can only go down)."""
    if report.up.get("rlimits"):
        set_rlimits(report, memory_bytes=memory_bytes, cpu_seconds=cpu_seconds, open_files=None, processes=None)


# -- uid ---------------------------------------------------------------------------------------------


def drop_privileges(report: WallReport, jail_uid: int) -> None:
    """Root becomes ``jail_uid``/``jail_uid`` with no groups; anyone else must already be unprivileged."""
    if os.geteuid() != 0:
        report.raise_("user", os.getuid() != 0, "")
        return
    try:
        os.setgroups([])
        os.setresgid(jail_uid, jail_uid, jail_uid)
        os.setresuid(jail_uid, jail_uid, jail_uid)
    except OSError as exc:
        report.raise_("user", False, f"setuid({jail_uid}): {exc}")
        return
    report.raise_("user", os.geteuid() == jail_uid and os.getegid() == jail_uid, "uid did not change")


# -- Landlock ----------------------------------------------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture (new syscalls are unified)
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_READ = (1 << 2) | (1 << 3)  # READ_FILE | READ_DIR
_FS_READ_FILE = 1 << 2


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none."""
    if platform.system() != "Linux":
        return 0
    version = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(0, int(version))


def readable_roots() -> list[str]:
    """Folders a run may read: the Python installation's libraries (stdlib, site-packages) and zoneinfo."""
    roots: set[str] = set()
    for scheme_paths in (sysconfig.get_paths(), sysconfig.get_paths(vars={"base": sys.base_prefix,
                                                                          "platbase": sys.base_exec_prefix})):
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            path = scheme_paths.get(key)
            if path and os.path.isdir(path):
                roots.add(os.path.realpath(path))
    for path in ("/usr/share/zoneinfo",):
        if os.path.isdir(path):
            roots.add(path)
    return sorted(roots)


def build_ruleset(readable: list[str] | tuple[str, ...]) -> tuple[int | None, str]:
    """A Landlock ruleset: read beneath ``readable`` only, write and create nowhere, no TCP, no outside
    signals. Returns (its descriptor, the ABI) or (None, why not). Built once in the jail's template;
    each run process only has to enforce it."""
    abi = landlock_abi()
    if abi <= 0:
        return None, "the kernel offers no Landlock (Linux 5.13+, enabled as an LSM)"
    handled_fs = (1 << 13) - 1  # ABI 1: execute … make_sym
    if abi >= 2:
        handled_fs |= 1 << 13  # refer
    if abi >= 3:
        handled_fs |= 1 << 14  # truncate
    if abi >= 5:
        handled_fs |= 1 << 15  # ioctl_dev
    handled_net = 0b11 if abi >= 4 else 0  # bind_tcp | connect_tcp
    scoped = 0b11 if abi >= 6 else 0  # abstract unix sockets | signals
    if abi >= 6:
        attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", handled_fs, handled_net)
    else:
        attr = struct.pack("=Q", handled_fs)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, buffer, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        return None, f"landlock_create_ruleset: {_errno_text()}"
    for path in readable:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            access = _FS_READ if os.path.isdir(path) else _FS_READ_FILE
            rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
            if _libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                             rule, ctypes.c_uint32(0)) != 0:
                why = f"landlock_add_rule({path}): {_errno_text()}"
                os.close(ruleset)
                return None, why
        finally:
            os.close(fd)
    return int(ruleset), str(abi)


def restrict_files(report: WallReport, readable: list[str] | tuple[str, ...], ruleset: int | None = None) -> None:
    """Enforce Landlock on this process: ``ruleset`` if one was built already, else one built now."""
    own = ruleset is None
    if ruleset is None:
        ruleset, detail = build_ruleset(readable)
        if ruleset is None:
            report.raise_("landlock", False, detail)
            return
    else:
        detail = str(landlock_abi())
    try:
        if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            report.raise_("landlock", False, f"landlock_restrict_self: {_errno_text()}")
            return
    finally:
        if own:
            os.close(ruleset)
    report.raise_("landlock", True)
    report.why["landlock_abi"] = detail


# -- seccomp -----------------------------------------------------------------------------------------

DENIED = (
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "bpf", "keyctl", "add_key", "request_key", "perf_event_open", "socket",
    "socketpair", "connect", "bind", "listen", "accept", "accept4", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "swapon", "swapoff", "reboot", "acct", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at", "name_to_handle_at",
    "fork", "vfork", "pidfd_open", "pidfd_send_signal", "pidfd_getfd", "setuid", "setgid", "setreuid",
    "setregid", "setresuid", "setresgid", "setgroups", "setfsuid", "setfsgid", "capset", "personality",
    "quotactl", "mknod", "mknodat", "fanotify_init", "lookup_dcookie", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "prctl", "iopl", "ioperm", "modify_ldt", "syslog",
    "vhangup", "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname", "setdomainname",
    "nfsservctl", "uselib",
)
"""System calls a run may never make (refused with EPERM)."""
SELF_ONLY = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
"""Signal calls allowed only when their first argument is the run's own pid."""

_X86_64 = {
    "execve": 59, "execveat": 322, "ptrace": 101, "mount": 165, "umount2": 166, "unshare": 272, "setns": 308,
    "bpf": 321, "keyctl": 250, "add_key": 248, "request_key": 249, "perf_event_open": 298,
    "process_vm_readv": 310, "process_vm_writev": 311, "socket": 41, "socketpair": 53, "connect": 42, "bind": 49,
    "listen": 50, "accept": 43, "accept4": 288, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "pivot_root": 155, "chroot": 161, "swapon": 167, "swapoff": 168,
    "reboot": 169, "acct": 163, "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_by_handle_at": 304, "name_to_handle_at": 303, "fork": 57, "vfork": 58,
    "clone": 56, "clone3": 435, "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
    "rt_tgsigqueueinfo": 297, "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "setuid": 105,
    "setgid": 106, "setreuid": 113, "setregid": 114, "setresuid": 117, "setresgid": 119, "setgroups": 116,
    "setfsuid": 122, "setfsgid": 123, "capset": 126, "personality": 135, "quotactl": 179, "mknod": 133,
    "mknodat": 259, "fanotify_init": 300, "lookup_dcookie": 212, "move_mount": 429, "open_tree": 428,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "prctl": 157,
    "iopl": 172, "ioperm": 173, "modify_ldt": 154, "syslog": 103, "vhangup": 153, "settimeofday": 164,
    "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305, "sethostname": 170, "setdomainname": 171,
    "nfsservctl": 180, "uselib": 134,
}
_AARCH64 = {
    "execve": 221, "execveat": 281, "ptrace": 117, "mount": 40, "umount2": 39, "unshare": 97, "setns": 268,
    "bpf": 280, "keyctl": 219, "add_key": 217, "request_key": 218, "perf_event_open": 241,
    "process_vm_readv": 270, "process_vm_writev": 271, "socket": 198, "socketpair": 199, "connect": 203,
    "bind": 200, "listen": 201, "accept": 202, "accept4": 242, "kexec_load": 104, "kexec_file_load": 294,
    "init_module": 105, "finit_module": 273, "delete_module": 106, "pivot_root": 41, "chroot": 51, "swapon": 224,
    "swapoff": 225, "reboot": 142, "acct": 89, "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_by_handle_at": 265, "name_to_handle_at": 264, "clone": 220, "clone3": 435,
    "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
    "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438, "setuid": 146, "setgid": 144,
    "setreuid": 145, "setregid": 143, "setresuid": 147, "setresgid": 149, "setgroups": 159, "setfsuid": 151,
    "setfsgid": 152, "capset": 91, "personality": 92, "quotactl": 60, "mknodat": 33, "fanotify_init": 262,
    "lookup_dcookie": 18, "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "prctl": 167, "syslog": 116, "vhangup": 58, "settimeofday": 170,
    "clock_settime": 112, "adjtimex": 171, "clock_adjtime": 266, "sethostname": 161, "setdomainname": 162,
    "nfsservctl": 42,
}
_ARCHES = {"x86_64": (0xC000003E, _X86_64), "aarch64": (0xC00000B7, _AARCH64)}
"""``uname -m`` → (AUDIT_ARCH_* value, syscall numbers)."""

_LD_ABS_W = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
_X32_BIT = 0x40000000


Jump = int | str
"""A BPF jump: an offset, or the name of a ``_Label`` resolved at the end."""


@dataclass(frozen=True)
class _Label:
    """A jump target in a program being built."""

    name: str


def seccomp_program(machine: str, own_pid: int) -> list[tuple[int, int, int, int]] | None:
    """The filter as BPF instructions ``(code, jt, jf, k)``, or None on an architecture without a table."""
    if machine not in _ARCHES:
        return None
    audit_arch, numbers = _ARCHES[machine]
    # Built with symbolic jump targets ("deny", "allow", "enosys", "kill"), resolved at the end.
    body: list[tuple[int, Jump, Jump, int] | _Label] = [
        (_LD_ABS_W, 0, 0, 4),  # seccomp_data.arch
        (_JEQ, 0, "kill", audit_arch),
        (_LD_ABS_W, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        body.append((_JGE, "deny", 0, _X32_BIT))
    body.append((_JEQ, "enosys", 0, numbers["clone3"]))  # glibc then falls back to clone, which is checked
    for name in DENIED:
        if name in numbers:
            body.append((_JEQ, "deny", 0, numbers[name]))
    clone_at = len(body)
    body.append((_JEQ, 0, "after_clone", numbers["clone"]))
    body.append((_LD_ABS_W, 0, 0, 16))  # args[0] low word: clone flags
    body.append((_JSET, "allow", "deny", CLONE_THREAD))  # threads yes, processes no
    body.append(_Label("after_clone"))
    for name in SELF_ONLY:
        body.append((_JEQ, 0, f"skip_{name}", numbers[name]))
        body.append((_LD_ABS_W, 0, 0, 20))  # args[0] high word must be 0
        body.append((_JEQ, 0, "deny", 0))
        body.append((_LD_ABS_W, 0, 0, 16))  # args[0] low word must be our pid
        body.append((_JEQ, "allow", "deny", own_pid))
        body.append(_Label(f"skip_{name}"))
    body.append(_Label("allow"))
    body.append((_RET, 0, 0, _RET_ALLOW))
    body.append(_Label("deny"))
    body.append((_RET, 0, 0, _RET_ERRNO | errno.EPERM))
    body.append(_Label("enosys"))
    body.append((_RET, 0, 0, _RET_ERRNO | errno.ENOSYS))
    body.append(_Label("kill"))
    body.append((_RET, 0, 0, _RET_KILL_PROCESS))
    del clone_at
    labels: dict[str, int] = {}
    program: list[tuple[int, Jump, Jump, int]] = []
    for item in body:
        if isinstance(item, _Label):
            labels[item.name] = len(program)
        else:
            program.append(item)

    def offset(target: Jump, at: int) -> int:
        if isinstance(target, int):
            return target
        distance = labels[target] - at - 1
        if not 0 <= distance <= 255:
            raise ValueError(f"seccomp jump to {target} out of range ({distance})")
        return distance

    return [(code, offset(jt, at), offset(jf, at), k) for at, (code, jt, jf, k) in enumerate(program)]


_PID_PLACEHOLDER = 0x7EADBEEF
"""Stands for the run's own pid in a filter built before the run process exists (pids stay below 2**22)."""


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """The filter as the kernel reads it, with :data:`_PID_PLACEHOLDER` for the pid; None where unsupported."""
    if platform.system() != "Linux":
        return None
    program = seccomp_program(machine or platform.machine(), _PID_PLACEHOLDER)
    if program is None:
        return None
    raw = b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    if raw.count(struct.pack("=I", _PID_PLACEHOLDER)) != len(SELF_ONLY):
        raise RuntimeError("the seccomp filter's pid placeholder is ambiguous")
    return raw


def install_seccomp(report: WallReport, prebuilt: bytes | None = None) -> None:
    """Load the filter into this process (needs no_new_privs first); it can never be removed."""
    raw = prebuilt if prebuilt is not None else seccomp_filter()
    if raw is None:
        report.raise_("seccomp", False, f"no syscall table for {platform.system()} {platform.machine()}")
        return
    raw = raw.replace(struct.pack("=I", _PID_PLACEHOLDER), struct.pack("=I", os.getpid()))
    filters = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(raw) // 8, ctypes.addressof(filters))
    result = _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)
    if result != 0:
        report.raise_("seccomp", False, f"prctl(PR_SET_SECCOMP): {_errno_text()}")
        return
    report.raise_("seccomp", True)


# -- all of them ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confinement:
    """What one run's walls are made of."""

    memory_bytes: int | None
    cpu_seconds: int | None
    jail_uid: int = DEFAULT_JAIL_UID
    open_files: int = 32
    readable: tuple[str, ...] = ()
    ruleset: int | None = None
    """A Landlock ruleset built beforehand (``build_ruleset``); None: build one from ``readable``."""
    seccomp: bytes | None = None
    """A seccomp filter built beforehand (``seccomp_filter``); None: build it now."""


def confine(report: WallReport, confinement: Confinement) -> WallReport:
    """Raise every wall in this freshly forked, single-threaded process, in the order each needs."""
    processes = 64 if os.geteuid() == 0 else None  # per uid: only meaningful for the dedicated jail uid
    set_rlimits(report, memory_bytes=confinement.memory_bytes, cpu_seconds=confinement.cpu_seconds,
                open_files=confinement.open_files, processes=processes)
    drop_privileges(report, confinement.jail_uid)
    die_with_parent()
    prctl(PR_SET_DUMPABLE, 0)
    report.raise_("no_new_privs", prctl(PR_SET_NO_NEW_PRIVS, 1), _errno_text())
    restrict_files(report, confinement.readable, confinement.ruleset)
    if report.up["no_new_privs"]:
        install_seccomp(report, confinement.seccomp)
    else:
        report.raise_("seccomp", False, "needs no_new_privs")
    return report
