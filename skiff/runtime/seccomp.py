"""Compile the OCI spec's ``linux.seccomp`` object into a BPF filter and install it, the way runc 1.1 does.

libseccomp (``libseccomp.so.2``, through ctypes) builds the filter; we then export its BPF program,
prepend runc's "-ENOSYS stub" and install the result with seccomp(2) ourselves. The stub makes
syscalls newer than anything the profile names fail with ENOSYS instead of the default action
(usually EPERM), so that a C library probing for a new syscall (clone3, faccessat2, ...) falls back
to the old one instead of failing. That is why we do not call ``seccomp_load``.

:func:`validate` runs in the runtime's parent before fork and also maps the library: :func:`load`
runs in the container's init after pivot_root, where the host's libseccomp is no longer reachable
(and where opening it by name would pick up whatever library the container's image ships).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Any, NamedTuple

from skiff.errors import InvalidArgument, SystemFailure, Unsupported

_LIBRARY = "libseccomp.so.2"

# Action encodings (seccomp.h). ERRNO and TRACE carry a 16-bit value in their low bits.
_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_TAKES_ERRNO = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"})
# Default actions under which an unknown syscall should simply run: no -ENOSYS stub then. TRACE counts
# because a tracer must cope with new syscalls itself (runc's reasoning).
_PERMISSIVE = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"})
_NOTIFY = "SCMP_ACT_NOTIFY"

_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# The runtime spec's architecture names; libseccomp's name is the suffix, lowercased.
_ARCHES = frozenset(
    "SCMP_ARCH_" + a
    for a in [
        "X86", "X86_64", "X32", "ARM", "AARCH64", "MIPS", "MIPS64", "MIPS64N32", "MIPSEL", "MIPSEL64",
        "MIPSEL64N32", "PPC", "PPC64", "PPC64LE", "S390", "S390X", "PARISC", "PARISC64", "RISCV64",
        "LOONGARCH64",
    ]
)

# Filter flags: the seccomp(2) flag bit and the libseccomp attribute that checks the kernel supports it.
_SCMP_FLTATR_CTL_NNP = 3
_SCMP_FLTATR_CTL_TSYNC = 4
_SCMP_FLTATR_CTL_LOG = 6
_SCMP_FLTATR_CTL_SSB = 7
_SCMP_FLTATR_CTL_OPTIMIZE = 8
_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": (1 << 0, _SCMP_FLTATR_CTL_TSYNC),
    "SECCOMP_FILTER_FLAG_LOG": (1 << 1, _SCMP_FLTATR_CTL_LOG),
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": (1 << 2, _SCMP_FLTATR_CTL_SSB),
}
# Only meaningful with a notify listener, which we do not implement.
_NOTIFY_FLAGS = frozenset({"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "SECCOMP_FILTER_FLAG_NEW_LISTENER"})

_MAX_ARGS = 6
_U64_MAX = (1 << 64) - 1
_NR_SCMP_ERROR = -1
_OPTIMIZE_ABOVE = 32  # rules; libseccomp <= 2.5.4 misbehaves with a binary tree and no rules

# Classic BPF, as the kernel's seccomp filter runs it.
_BPF_LD_W_ABS = 0x20
_BPF_JA = 0x05
_BPF_JEQ_K = 0x15
_BPF_JGT_K = 0x25
_BPF_JSET_K = 0x45
_BPF_RET_K = 0x06
_SECCOMP_DATA_NR = 0
_SECCOMP_DATA_ARCH = 4
_INSN = struct.Struct("=HBBI")  # struct sock_filter
_BPF_MAXINSNS = 4096
_ENOSYS_RET = 0x00050000 | errno.ENOSYS
_AUDIT_ARCH_X86_64 = 0xC000003E
_SCMP_ARCH_X32 = 0x4000003E  # libseccomp's pseudo token; the kernel reports x32 as x86_64
_X32_SYSCALL_BIT = 0x40000000
_S390_ARCHES = frozenset({0x16, 0x80000016})  # s390 multiplexes unknown syscalls through nr 0

_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_SET_MODE_FILTER = 1
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358, "s390x": 348}


class _Arg(NamedTuple):
    index: int
    op: int
    value: int
    value_two: int


class _Rule(NamedTuple):
    name: str
    action: int
    args: tuple[_Arg, ...]


class _Profile(NamedTuple):
    default_name: str
    default_action: int
    arches: tuple[str, ...]
    flags: tuple[str, ...]
    rules: tuple[_Rule, ...]


class _ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``."""

    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``: the program is passed as raw ``struct sock_filter`` bytes."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


# --- validation -------------------------------------------------------------------------------------


def validate(seccomp: dict) -> None:
    """Reject a profile we cannot load, in the parent, before anything is created.

    Also maps libseccomp when the profile is enabled, so the forked init still has it after pivot_root.
    """
    profile = _parse(seccomp)
    if profile is not None:
        lib = _lib()
        for arch in profile.arches:
            _arch_token(lib, arch)


def _fail(where: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"linux.seccomp{where}: {message}")


def _known(value: Any, table: dict | frozenset) -> bool:
    return isinstance(value, str) and value in table


def _is_int(value: Any, low: int = 0, high: int = _U64_MAX) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _list(seccomp: dict, key: str) -> list:
    value = seccomp.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(f".{key}", "must be a list")
    return value


def _action(name: Any, errno_ret: Any, where: str) -> int:
    """Encode an action name (+ errnoRet) the way libseccomp does; errnoRet on other actions is ignored,
    as runc does."""
    if name == _NOTIFY:
        raise Unsupported(f"linux.seccomp{where}: SCMP_ACT_NOTIFY is not supported (no seccomp notify agent)")
    if not _known(name, _ACTIONS):
        raise _fail(where, f"unknown action {name!r}")
    if errno_ret is not None and not _is_int(errno_ret, 0, 0xFFFF):
        raise _fail(where, f"errno return value must be an integer in 0..65535, not {errno_ret!r}")
    if name not in _TAKES_ERRNO:
        return _ACTIONS[name]
    return _ACTIONS[name] | (errno.EPERM if errno_ret is None else errno_ret)


def _parse_arg(arg: Any, where: str) -> _Arg:
    if not isinstance(arg, dict):
        raise _fail(where, "must be an object")
    if not _is_int(arg.get("index"), 0, _MAX_ARGS - 1):
        raise _fail(f"{where}.index", f"must be an integer in 0..{_MAX_ARGS - 1}, not {arg.get('index')!r}")
    for key in ("value", "valueTwo"):
        if not _is_int(arg.get(key, 0)):
            raise _fail(f"{where}.{key}", f"must be an unsigned 64-bit integer, not {arg.get(key)!r}")
    if not _known(arg.get("op"), _OPERATORS):
        raise _fail(f"{where}.op", f"unknown operator {arg.get('op')!r}")
    return _Arg(arg["index"], _OPERATORS[arg["op"]], arg.get("value", 0), arg.get("valueTwo", 0))


def _parse_syscall(entry: Any, where: str) -> list[_Rule]:
    if not isinstance(entry, dict):
        raise _fail(where, "must be an object")
    names = entry.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) and n and "\0" not in n for n in names):
        raise _fail(f"{where}.names", "must be a list of syscall names")
    action = _action(entry.get("action"), entry.get("errnoRet"), f"{where}.action")
    args = entry.get("args")
    args = [] if args is None else args
    if not isinstance(args, list):
        raise _fail(f"{where}.args", "must be a list")
    if len(args) > _MAX_ARGS:
        raise _fail(f"{where}.args", f"has {len(args)} conditions; at most {_MAX_ARGS} are allowed")
    conds = tuple(_parse_arg(a, f"{where}.args[{i}]") for i, a in enumerate(args))
    return [_Rule(name, action, conds) for name in names]


def _parse_flags(seccomp: dict) -> tuple[str, ...]:
    flags = _list(seccomp, "flags")
    for flag in flags:
        if _known(flag, _NOTIFY_FLAGS):
            raise Unsupported(f"linux.seccomp.flags: {flag} needs a seccomp notify agent (not supported)")
        if not _known(flag, _FLAGS):
            raise _fail(".flags", f"unknown flag {flag!r}")
    return tuple(flags)


def _parse(seccomp: Any) -> _Profile | None:
    """Check and normalise the profile; None means seccomp is off (no default action, no syscalls)."""
    if not isinstance(seccomp, dict):
        raise _fail("", "must be an object")
    syscalls = _list(seccomp, "syscalls")
    if not seccomp.get("defaultAction") and not syscalls:
        return None  # runc treats this as "no seccomp"
    default_name = seccomp.get("defaultAction")
    if default_name is None:
        raise _fail(".defaultAction", "is required when syscalls are listed")
    default = _action(default_name, seccomp.get("defaultErrnoRet"), ".defaultAction")
    arches = _list(seccomp, "architectures")
    for arch in arches:
        if not _known(arch, _ARCHES):
            raise _fail(".architectures", f"unknown architecture {arch!r}")
    rules = [r for i, entry in enumerate(syscalls) for r in _parse_syscall(entry, f".syscalls[{i}]")]
    return _Profile(default_name, default, tuple(arches), _parse_flags(seccomp), tuple(rules))


# --- libseccomp -------------------------------------------------------------------------------------

_lib_handle: ctypes.CDLL | None = None

_PROTOTYPES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "seccomp_init": (ctypes.c_void_p, (ctypes.c_uint32,)),
    "seccomp_release": (None, (ctypes.c_void_p,)),
    "seccomp_arch_add": (ctypes.c_int, (ctypes.c_void_p, ctypes.c_uint32)),
    "seccomp_arch_native": (ctypes.c_uint32, ()),
    "seccomp_arch_resolve_name": (ctypes.c_uint32, (ctypes.c_char_p,)),
    "seccomp_attr_set": (ctypes.c_int, (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)),
    "seccomp_syscall_resolve_name": (ctypes.c_int, (ctypes.c_char_p,)),
    "seccomp_syscall_resolve_name_arch": (ctypes.c_int, (ctypes.c_uint32, ctypes.c_char_p)),
    "seccomp_rule_add_array": (
        ctypes.c_int,
        (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)),
    ),
    "seccomp_export_bpf": (ctypes.c_int, (ctypes.c_void_p, ctypes.c_int)),
}


def _lib() -> ctypes.CDLL:
    """Open libseccomp once, on first use: importing this module stays cheap on the start path."""
    global _lib_handle
    if _lib_handle is None:
        try:
            lib = ctypes.CDLL(_LIBRARY)
        except OSError as e:
            raise Unsupported(f"seccomp: cannot load {_LIBRARY} (install libseccomp2): {e}") from e
        for name, (restype, argtypes) in _PROTOTYPES.items():
            func = getattr(lib, name)
            func.restype, func.argtypes = restype, argtypes
        _lib_handle = lib
    return _lib_handle


def _mapped_lib() -> ctypes.CDLL:
    """The library validate() mapped. load() never opens it itself: after pivot_root or setns the name
    resolves in the container's filesystem, and a library planted there would run with our privileges."""
    if _lib_handle is None:
        raise SystemFailure("seccomp: libseccomp was not mapped before entering the container; call validate")
    return _lib_handle


def _check(rc: int, what: str) -> None:
    """libseccomp returns -errno on failure."""
    if rc < 0:
        raise SystemFailure(f"seccomp: {what}: {os.strerror(-rc)}")


def _arch_token(lib: ctypes.CDLL, arch: str) -> int:
    token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
    if not token:
        raise Unsupported(f"seccomp: architecture {arch} is not supported by this libseccomp")
    return token


def _configure(lib: ctypes.CDLL, ctx: int, profile: _Profile) -> None:
    """Attributes and architectures, before any rule (libseccomp wants arches added first)."""
    # The runtime sets no_new_privs itself when the spec asks for it; the filter must not.
    _check(lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0), "clearing the no_new_privs attribute")
    for flag in profile.flags:
        rc = lib.seccomp_attr_set(ctx, _FLAGS[flag][1], 1)
        if rc == -errno.EOPNOTSUPP:
            raise Unsupported(f"seccomp: {flag} is not supported by this kernel or libseccomp")
        _check(rc, f"setting {flag}")
    if len(profile.rules) > _OPTIMIZE_ABOVE:
        lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_OPTIMIZE, 2)  # binary tree; older libraries lack it
    for arch in profile.arches:
        rc = lib.seccomp_arch_add(ctx, _arch_token(lib, arch))
        if rc != -errno.EEXIST:
            _check(rc, f"adding architecture {arch}")


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: _Rule, nr: int) -> None:
    """One rule; conditions are ANDed, except that runc ORs them (one rule each) when two share an
    argument index, and profiles rely on that."""
    indexes = [a.index for a in rule.args]
    groups = [(a,) for a in rule.args] if len(set(indexes)) < len(indexes) else [rule.args]
    for group in groups:
        conds = (_ArgCmp * max(len(group), 1))(*(_ArgCmp(a.index, a.op, a.value, a.value_two) for a in group))
        rc = lib.seccomp_rule_add_array(ctx, rule.action, nr, len(group), conds)
        _check(rc, f"adding the rule for {rule.name}")


def _add_rules(lib: ctypes.CDLL, ctx: int, profile: _Profile) -> None:
    for rule in profile.rules:
        if rule.action == profile.default_action:
            continue  # libseccomp rejects a rule that repeats the default action
        nr = lib.seccomp_syscall_resolve_name(rule.name.encode())
        if nr == _NR_SCMP_ERROR:
            continue  # unknown to this libseccomp: skipped, as runc does
        _add_rule(lib, ctx, rule, nr)


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    """The compiled program as raw sock_filter bytes (a memfd: a pipe could fill up and block)."""
    fd = os.memfd_create("skiff-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "exporting the filter")
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


def _compile(lib: ctypes.CDLL, profile: _Profile) -> bytes:
    ctx = lib.seccomp_init(profile.default_action)
    if not ctx:
        raise SystemFailure(f"seccomp: cannot create a filter with default action {profile.default_name}")
    try:
        _configure(lib, ctx, profile)
        _add_rules(lib, ctx, profile)
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


# --- the -ENOSYS stub -------------------------------------------------------------------------------


def _audit_arch(token: int) -> int:
    """libseccomp's arch tokens are the kernel's AUDIT_ARCH values, except for x32."""
    return _AUDIT_ARCH_X86_64 if token == _SCMP_ARCH_X32 else token


def _last_syscalls(lib: ctypes.CDLL, profile: _Profile) -> dict[int, dict[int, int]]:
    """Per kernel arch, per libseccomp arch: the highest syscall number the profile names.

    The native arch always counts (runc >= 1.1.12 adds it: some profiles forget to list it).
    """
    tokens = dict.fromkeys([*(_arch_token(lib, a) for a in profile.arches), lib.seccomp_arch_native()])
    names = {rule.name.encode() for rule in profile.rules}
    last: dict[int, dict[int, int]] = {}
    for token in tokens:
        top = max((lib.seccomp_syscall_resolve_name_arch(token, n) for n in names), default=0)
        if top > 0:
            last.setdefault(_audit_arch(token), {})[token] = top
    return last


def _arch_section(audit: int, tops: dict[int, int]) -> list[tuple]:
    """Instructions for one kernel arch: syscall numbers above the profile's highest get ENOSYS."""
    code: list[tuple] = [(_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_NR)]
    if audit in _S390_ARCHES:
        code.append((_BPF_JEQ_K, "enosys", 0, 0))
    if audit != _AUDIT_ARCH_X86_64:
        return [*code, (_BPF_JGT_K, "enosys", "filter", next(iter(tops.values())))]
    # x86_64 and x32 share the kernel arch; x32 syscalls carry bit 30 in their number.
    native, x32 = tops.get(audit), tops.get(_SCMP_ARCH_X32)
    code.append((_BPF_JSET_K, "x32" if x32 else "filter", "x86_64" if native else "filter", _X32_SYSCALL_BIT))
    if native:
        code += [("label", "x86_64"), (_BPF_JGT_K, "enosys", "filter", native)]
    if x32:
        code += [("label", "x32"), (_BPF_JGT_K, "enosys", "filter", x32)]
    return code


def _assemble(code: list[tuple]) -> bytes:
    """Resolve labels (``("label", name)`` marks a position; "filter" is the end) into jump offsets."""
    insns = [i for i in code if i[0] != "label"]
    where, pos = {"filter": len(insns)}, 0
    for item in code:
        if item[0] == "label":
            where[item[1]] = pos
        else:
            pos += 1
    out = bytearray()
    for pc, (op, jt, jf, k) in enumerate(insns):
        jt, jf = (where[j] - pc - 1 if isinstance(j, str) else j for j in (jt, jf))
        if op == _BPF_JA and isinstance(k, str):
            k = where[k] - pc - 1
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise SystemFailure("seccomp: the -ENOSYS stub is too long")
        out += _INSN.pack(op, jt, jf, k)
    return bytes(out)


def _enosys_stub(lib: ctypes.CDLL, profile: _Profile) -> bytes:
    """runc's patch: without it, a syscall the profile has never heard of gets the default action."""
    if profile.default_name in _PERMISSIVE or profile.default_action == _ENOSYS_RET:
        return b""  # unknown syscalls already run, or already get ENOSYS
    last = _last_syscalls(lib, profile)
    if not last:
        return b""
    code: list[tuple] = [(_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_ARCH)]
    for audit in last:
        code.append((_BPF_JEQ_K, 0, f"after-{audit:x}", audit))
        code += _arch_section(audit, last[audit])
        code.append(("label", f"after-{audit:x}"))
    code += [(_BPF_JA, 0, 0, "filter"), ("label", "enosys"), (_BPF_RET_K, 0, 0, _ENOSYS_RET)]
    return _assemble(code)


# --- installing ---------------------------------------------------------------------------------------


def _install(program: bytes, flags: int) -> None:
    """Attach the program to the calling thread (the container's single-threaded init)."""
    count = len(program) // _INSN.size
    if count > _BPF_MAXINSNS:
        raise SystemFailure(f"seccomp: the filter has {count} instructions; the kernel takes {_BPF_MAXINSNS}")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(count, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    if flags == 0:  # prctl needs no per-architecture syscall number
        rc = libc.prctl(_PR_SET_SECCOMP, ulong(_SECCOMP_MODE_FILTER), ctypes.byref(prog), ulong(0), ulong(0))
    else:
        nr = _SYS_SECCOMP.get(os.uname().machine)
        if nr is None:
            raise Unsupported(f"seccomp: filter flags are not supported on {os.uname().machine}")
        mode = ulong(_SECCOMP_SET_MODE_FILTER)
        rc = libc.syscall(ctypes.c_long(nr), mode, ulong(flags), ctypes.byref(prog))
    if rc < 0:
        err = ctypes.get_errno()
        raise SystemFailure(f"seccomp: loading the filter ({count} instructions): {os.strerror(err)}")


def load(seccomp: dict) -> None:
    """Build the profile's filter and install it on the calling process; the runtime does this last,
    just before execve, so the filter governs the container's process and nothing of the runtime's.

    validate() must have run in this process or an ancestor it forked from: it maps libseccomp.
    """
    profile = _parse(seccomp)
    if profile is None:
        return
    lib = _mapped_lib()
    program = _compile(lib, profile)
    flags = 0
    for flag in profile.flags:
        flags |= _FLAGS[flag][0]
    _install(_enosys_stub(lib, profile) + program, flags)
