"""Linux capabilities by name, and applying the five OCI capability sets to the current process."""

from __future__ import annotations

import errno

from skiff.runtime import linux

# Numbers from linux/capability.h.
CAPABILITIES = {
    name: number
    for number, name in enumerate(
        (
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
            "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
        )
    )
}

SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def all_capabilities() -> list[str]:
    """Every capability this kernel knows (what ``--privileged`` grants)."""
    last = linux.last_cap()
    return [name for name, number in CAPABILITIES.items() if number <= last]


def _mask(names: list[str] | None, last: int) -> int:
    # Unknown names and capabilities newer than the kernel are ignored, as runc does (it only warns).
    mask = 0
    for name in names or ():
        number = CAPABILITIES.get(name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper())
        if number is not None and number <= last:
            mask |= 1 << number
    return mask


class CapabilitySets:
    """The five sets of one process, as bit masks, resolved once from the spec."""

    def __init__(self, spec_caps: dict | None) -> None:
        last = linux.last_cap()
        self.last = last
        caps = spec_caps or {}
        self.bounding, self.effective, self.permitted, self.inheritable, self.ambient = (
            _mask(caps.get(s), last) for s in SETS
        )

    def drop_bounding(self) -> None:
        """Drop every capability not in the bounding set (needs CAP_SETPCAP, so call while still root)."""
        for number in range(self.last + 1):
            if not self.bounding & (1 << number):
                try:
                    linux.prctl(linux.PR_CAPBSET_DROP, number)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise

    def apply(self) -> None:
        """Set effective, permitted and inheritable, then raise the ambient ones (after the user switch)."""
        linux.capset(self.effective, self.permitted, self.inheritable)
        for number in range(self.last + 1):
            if self.ambient & (1 << number):
                try:
                    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_RAISE, number)
                except OSError:
                    # As runc: an ambient capability missing from permitted or inheritable is skipped.
                    pass
