"""The keys the Compose specification allows, and which of them ``skiff compose`` implements.

An unknown key is an error naming it and where it is (as Compose's schema validation reports it); a key
the specification has but Skiff does not implement is an error too, rather than being silently ignored.
``x-`` extension keys are allowed everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

from skiff import errors

TOP_LEVEL = ("version", "name", "services", "networks", "volumes", "secrets", "configs", "include", "models")
TOP_LEVEL_UNSUPPORTED = ("include", "models")

SERVICE_SUPPORTED = (
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose", "volumes", "networks",
    "network_mode", "depends_on", "healthcheck", "restart", "deploy", "labels", "container_name", "hostname",
    "domainname", "working_dir", "user", "init", "read_only", "tmpfs", "extra_hosts", "secrets", "configs",
    "profiles", "cap_add", "cap_drop", "privileged", "stop_signal", "stop_grace_period", "tty", "stdin_open", "dns",
    "dns_search", "scale", "pull_policy", "mem_limit", "cpus", "pids_limit", "shm_size", "sysctls", "ulimits",
    "group_add", "security_opt", "platform",
)
SERVICE_UNSUPPORTED = (
    "annotations", "attach", "blkio_config", "cpu_count", "cpu_percent", "cpu_shares", "cpu_quota", "cpu_period",
    "cpu_rt_period", "cpu_rt_runtime", "cpuset", "credential_spec", "cgroup", "cgroup_parent", "develop",
    "device_cgroup_rules", "devices", "dns_opt", "extends", "external_links", "gpus", "ipc", "isolation",
    "label_file", "links", "logging", "mac_address", "mem_reservation", "mem_swappiness", "memswap_limit",
    "oom_kill_disable", "oom_score_adj", "pid", "post_start", "pre_stop", "provider", "runtime", "storage_opt",
    "uts", "userns_mode", "volumes_from", "use_api_socket", "models",
)

BUILD_KEYS = ("context", "dockerfile", "dockerfile_inline", "args", "target", "labels", "cache_from", "cache_to",
              "no_cache", "pull", "network", "shm_size", "extra_hosts", "ssh", "secrets", "tags", "platforms",
              "isolation", "privileged", "additional_contexts", "ulimits", "entitlements", "provenance", "sbom")
PORT_KEYS = ("name", "mode", "host_ip", "target", "published", "protocol", "app_protocol")
VOLUME_KEYS = ("type", "source", "target", "read_only", "consistency", "bind", "volume", "tmpfs", "image")
SERVICE_NETWORK_KEYS = ("aliases", "ipv4_address", "ipv6_address", "link_local_ips", "mac_address", "priority",
                        "driver_opts", "gw_priority", "interface_name")
DEPENDS_ON_KEYS = ("condition", "required", "restart")
HEALTHCHECK_KEYS = ("test", "interval", "timeout", "retries", "start_period", "start_interval", "disable")
DEPLOY_KEYS = ("replicas", "resources", "restart_policy", "labels", "mode", "endpoint_mode", "placement",
               "rollback_config", "update_config")
NETWORK_KEYS = ("name", "driver", "driver_opts", "ipam", "external", "internal", "attachable", "enable_ipv4",
                "enable_ipv6", "labels")
VOLUME_TOP_KEYS = ("name", "driver", "driver_opts", "external", "labels")
FILE_RESOURCE_KEYS = ("name", "file", "environment", "content", "external", "labels", "driver", "driver_opts",
                      "template_driver")

# list-valued options whose values accumulate when an override file adds to them
JOINED = frozenset({"ports", "expose", "dns", "dns_search", "cap_add", "cap_drop", "extra_hosts", "security_opt",
                    "group_add", "profiles", "tmpfs"})


def check_keys(spec: object, allowed: Iterable[str], where: str) -> None:
    """Refuse a mapping with a key ``allowed`` does not list (``x-`` extensions aside)."""
    if not isinstance(spec, dict):
        raise errors.InvalidArgument(f"{where} must be a mapping")
    allowed = set(allowed)
    for key in spec:
        if not isinstance(key, str) or (key not in allowed and not key.startswith("x-")):
            raise errors.InvalidArgument(f"{where} Additional property {key} is not allowed")


def validate_document(document: dict, path: str) -> None:
    """One file's structure: top-level keys, each service's keys, each top-level resource's keys."""
    where = f"validating {path}:"
    try:
        check_keys(document, TOP_LEVEL, "(root)")
        for key in TOP_LEVEL_UNSUPPORTED:
            if key in document:
                raise errors.InvalidArgument(f"{key} is not supported by skiff compose")
        services = document.get("services") or {}
        check_keys(services, (k for k in services if isinstance(k, str)), "services")
        for name, spec in services.items():
            if spec is None:
                continue
            check_keys(spec, SERVICE_SUPPORTED + SERVICE_UNSUPPORTED, f"services.{name}")
            for key in spec:
                if key in SERVICE_UNSUPPORTED:
                    raise errors.InvalidArgument(f"services.{name}.{key} is not supported by skiff compose")
        for section, keys in (("networks", NETWORK_KEYS), ("volumes", VOLUME_TOP_KEYS),
                              ("secrets", FILE_RESOURCE_KEYS), ("configs", FILE_RESOURCE_KEYS)):
            for name, spec in (document.get(section) or {}).items():
                if spec is not None:
                    check_keys(spec, keys, f"{section}.{name}")
    except errors.InvalidArgument as e:
        raise errors.InvalidArgument(f"{where} {e}") from None
