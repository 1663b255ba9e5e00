"""The Dockerfile builder: a parsed Dockerfile and an unpacked context in, an image out, as Docker's legacy
builder makes it (``POST /build`` without BuildKit).

Every instruction is one step and makes one image (Docker's intermediate images), so the next build can
start from any of them (``skiff.build.cache``):

- ``FROM`` takes an image from the engine's image service (pulled when missing, or always with ``pull``),
  ``scratch``, or an earlier stage's result; the base's ``ONBUILD`` triggers run first.
- ``RUN`` runs in a real container made through the engine's ``ContainerService`` (the build's network
  mode, no health check, the image's entrypoint replaced), its output streamed into the build's; its
  changes become a layer (``ImageService.commit_step``), and the container is removed afterwards (``rm``;
  after a failure only with ``forcerm``, as Docker keeps the failed container for a look).
- ``COPY``/``ADD`` write into a snapshot of the parent mounted on the host, without a container
  (``skiff.build.copy``); ``WORKDIR`` makes its directory the same way.
- Everything else only changes the image config: the step's image gets no layer (``empty_layer``).

History ``created_by`` texts, the ``container_config`` probe and the cache keys follow Docker's legacy
builder: ``/bin/sh -c #(nop)  CMD ["sh"]`` for metadata, ``|1 A=b /bin/sh -c make`` for a RUN with build
args in scope, ``/bin/sh -c #(nop) COPY file:<sha256> in /dest `` for copies. The cache reuses a step only
when its parent, its probe (instruction after ARG expansion, build args in scope, for COPY/ADD the digest
of every source's content and metadata, and the ``--chown``/``--chmod`` options) are the same.

The builder speaks through two callbacks: ``out(text)`` for stream text (Step lines, `` ---> id``, RUN
output) and ``aux(record)`` for records (pull progress, the ``{"ID": ...}`` of each stage).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import secrets
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from skiff.build import copy as copying
from skiff.build.cache import CacheIndex, step_key
from skiff.build.context import BuildContext, OutsideContext, find_sources, resolve_in_scope, tree_hash
from skiff.build.dockerfile import (
    PROXY_ARGS,
    expand,
    expand_heredoc,
    expand_words,
    heredoc_marker,
    parse,
    parse_instruction,
    run_script,
    stages_needed,
)
from skiff.build.ignore import IgnoreMatcher
from skiff.errors import InvalidArgument, NotFound, SkiffError
from skiff.image.changes import apply_changes, go_duration
from skiff.image.reference import parse as parse_reference

log = logging.getLogger(__name__)

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_SNAPSHOT_PREFIX = "build-"  # the builder's own snapshots (COPY, WORKDIR, --from mounts)
HEREDOC_DIR = "/dev/pipes"  # where RUN <<EOF scripts with a #! line are mounted, as BuildKit does
# The container config fields Docker's image configs carry, in its order (container.Config).
_CONFIG_FIELDS: tuple[tuple[str, Any, bool], ...] = (
    ("Hostname", "", False), ("Domainname", "", False), ("User", "", False), ("AttachStdin", False, False),
    ("AttachStdout", False, False), ("AttachStderr", False, False), ("ExposedPorts", None, True),
    ("Tty", False, False), ("OpenStdin", False, False), ("StdinOnce", False, False), ("Env", None, False),
    ("Cmd", None, False), ("Healthcheck", None, True), ("ArgsEscaped", False, True), ("Image", "", False),
    ("Volumes", None, False), ("WorkingDir", "", False), ("Entrypoint", None, False), ("OnBuild", None, False),
    ("Labels", None, False), ("StopSignal", "", True), ("Shell", None, True),
)
_NOT_IN_ONBUILD = ("ONBUILD", "FROM", "MAINTAINER")

Output = Callable[[str], Awaitable[None]]
Aux = Callable[[dict], Awaitable[None]]


class BuildFailed(SkiffError):
    """A step failed: Docker's message, and the exit code of a failed RUN (1 for any other failure)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class BuildOptions:
    """``POST /build``'s parameters."""

    dockerfile: str = "Dockerfile"
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str | None] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    target: str = ""
    nocache: bool = False
    pull: bool = False
    rm: bool = True
    forcerm: bool = False
    platform: str = ""
    network_mode: str = ""
    cache_from: list[str] = field(default_factory=list)
    credentials: Callable[[str], Any] | None = None  # registry host -> Credentials (X-Registry-Config)


def docker_config(config: Mapping[str, Any]) -> dict:
    """``config`` in the shape Docker's builder writes image configs (every field, Go's omitempty ones left out
    when empty)."""
    out = {}
    for key, default, omit_empty in _CONFIG_FIELDS:
        value = config.get(key, default)
        if omit_empty and value in (None, "", False, {}, []):
            continue
        out[key] = value if value is not None or default is None else default
    return out


def _go_quote_list(words: list[str]) -> str:
    """Go's ``%q`` of a []string: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(w, ensure_ascii=False) for w in words) + "]"


def _env_key(entry: str) -> str:
    return entry.split("=", 1)[0]


def _env_pairs(env: list[str]) -> list[tuple[str, str]]:
    return [(e.split("=", 1)[0], e.split("=", 1)[1] if "=" in e else "") for e in env]


@dataclass
class _Stage:
    """What a stage has made so far: its image (None while a scratch stage is empty) and run config."""

    index: int
    name: str | None
    image: Any | None
    config: dict
    platform: str
    args: dict[str, str | None] = field(default_factory=dict)  # ARGs declared in the stage (None: no value)
    cmd_set: bool = False
    author: str = ""

    @property
    def image_id(self) -> str:
        return self.image.config_digest if self.image is not None else ""

    @property
    def shell(self) -> list[str]:
        return list(self.config.get("Shell") or DEFAULT_SHELL)


class Builder:
    """One engine's builder: ``images`` (ImageService), ``containers`` (ContainerService), the cache index and
    a work directory (contexts and mount points) under the data root."""

    def __init__(self, images: Any, containers: Any, work_root: str) -> None:
        self.images, self.containers, self.work_root = images, containers, work_root
        self.cache = CacheIndex(work_root)
        self.mounts_dir = os.path.join(work_root, "mnt")
        self.contexts_dir = os.path.join(work_root, "contexts")
        self.trash_dir = os.path.join(work_root, "trash")

    def start(self) -> None:
        """Remove what a build interrupted by the daemon's death left: contexts, mount points, the trash, and
        the snapshots of steps that were never committed (no build outlives its daemon). Its RUN container,
        if one was running, is an ordinary container that the engine restores, as dockerd does."""
        for directory in (self.contexts_dir, self.mounts_dir, self.trash_dir):
            if os.path.isdir(directory):
                for name in os.listdir(directory):
                    path = os.path.join(directory, name)
                    if os.path.ismount(path):
                        with contextlib.suppress(SkiffError):
                            self.images.unmount_rootfs(path)
                    shutil.rmtree(path, ignore_errors=True)
            os.makedirs(directory, exist_ok=True)
        for info in self.images.snapshots.list():
            if info.name.startswith(STEP_SNAPSHOT_PREFIX) and info.kind != "committed":
                self.images.remove_rootfs(info.name)

    def close(self) -> None:
        self.cache.close()

    async def build(self, context: BuildContext, options: BuildOptions, out: Output, aux: Aux) -> Any:
        """Build; returns the final image (tagged with ``options.tags``). Raises BuildFailed for a failed step,
        InvalidArgument for a bad Dockerfile or option."""
        run = _BuildRun(self, context, options, out, aux)
        try:
            return await run.build()
        finally:
            await asyncio.shield(run.cleanup())  # runs to its end even when the build is cancelled


class _BuildRun:
    """One build's state and steps."""

    def __init__(self, builder: Builder, context: BuildContext, options: BuildOptions, out: Output,
                 aux: Aux) -> None:
        self.b, self.context, self.options, self.out, self.aux = builder, context, options, out, aux
        self.images = builder.images
        self.id = secrets.token_hex(6)
        self.serial = 0
        self.stages: dict[str, _Stage] = {}  # by lower-case name and by index
        self.meta_args: dict[str, str | None] = {}
        self.used_args: set[str] = set()
        self.containers: list[str] = []  # intermediate containers still to remove
        self.snapshots: list[str] = []  # step snapshots not yet committed or removed
        self.mounted: list[str] = []
        self.step = 0
        self.total = 0
        self.cache_sources = self._cache_sources()
        self.escape = "\\"

    def _cache_sources(self) -> list[Any]:
        """The ``cache_from`` images that exist here (Docker's legacy builder does not pull them either)."""
        found = []
        for name in self.options.cache_from:
            with contextlib.suppress(NotFound, InvalidArgument):
                found.append(self.images.resolve(name))
        return found

    def _expand(self, word: str, env: Mapping[str, str]) -> str:
        return expand(word, env, escape=self.escape)

    # ------------------------------------------------------------------------------------------ the build

    async def build(self) -> Any:
        # The Dockerfile is read before .dockerignore applies: clients (docker-py, the CLI) send a Dockerfile
        # from outside the context under a generated name that their .dockerignore then excludes.
        text = await asyncio.to_thread(self.context.read_dockerfile, self.options.dockerfile)
        ignore_text = await asyncio.to_thread(self.context.read_ignore_file)
        if ignore_text is not None:
            await asyncio.to_thread(self.context.apply_ignore, IgnoreMatcher(ignore_text))
        dockerfile = parse(text, self.options.dockerfile)
        self.escape = dockerfile.escape
        if self.options.target and not any((s.name or "").lower() == self.options.target.lower()
                                           for s in dockerfile.stages):
            raise InvalidArgument(f"failed to reach build target {self.options.target} in Dockerfile")
        stages = stages_needed(dockerfile, self.options.target or None)
        if not stages:
            raise InvalidArgument("the Dockerfile has no FROM instruction")
        label_line = self._labels_instruction()
        self.total = len(dockerfile.global_args) + sum(1 + len(s.instructions) for s in stages)
        self.total += 1 if label_line else 0
        for arg in dockerfile.global_args:
            await self._print_step(arg.original)
            self._meta_arg(arg)
        final: _Stage | None = None
        for i, stage in enumerate(stages):
            final = await self._stage(stage, label_line if i == len(stages) - 1 else None)
        assert final is not None
        unused = sorted(k for k in self.options.build_args if k not in self.used_args and k not in PROXY_ARGS)
        if unused:
            await self.out(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        if final.image is None:
            raise InvalidArgument("No image was generated. Is your Dockerfile empty?")
        return final.image

    def _build_arg(self, key: str, default: str | None) -> str | None:
        """A ``--build-arg`` wins over the Dockerfile's default; one sent without a value (null) does not."""
        given = self.options.build_args.get(key)
        return given if given is not None else default

    def _labels_instruction(self) -> str | None:
        """The ``labels`` option, which Docker's builder adds as one more LABEL step at the end."""
        if not self.options.labels:
            return None
        pairs = [f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(self.options.labels.items())]
        return "LABEL " + " ".join(pairs)

    async def _print_step(self, original: str) -> None:
        self.step += 1
        await self.out(f"Step {self.step}/{self.total} : {original}")
        await self.out("\n")

    def _meta_arg(self, arg: Any) -> None:
        env = {k: v for k, v in self.meta_args.items() if v is not None}
        for item in arg.args:
            key, has_value, value = item.partition("=")
            key = self._expand(key, env)
            default = self._expand(value, env) if has_value else None
            given = self._build_arg(key, default)
            self.meta_args[key] = given
            if key in self.options.build_args:
                self.used_args.add(key)
            if given is not None:
                env[key] = given

    async def _stage(self, stage: Any, label_line: str | None) -> _Stage:
        await self._print_step(stage.from_instruction.original)
        state = await self._from(stage)
        await self.out(f" ---> {state.image_id.removeprefix('sha256:')[:12]}\n")
        await self._onbuild_triggers(state)
        for instruction in stage.instructions:
            await self._print_step(instruction.original)
            await self._dispatch(state, instruction)
            await self.out(f" ---> {state.image_id.removeprefix('sha256:')[:12]}\n")
        if label_line:
            await self._print_step(label_line)
            await self._dispatch(state, parse_instruction(label_line))
            await self.out(f" ---> {state.image_id.removeprefix('sha256:')[:12]}\n")
        if state.image is not None:
            await self.aux({"ID": state.image_id})
        self.stages[str(state.index)] = state
        if state.name:
            self.stages[state.name.lower()] = state
        return state

    # ------------------------------------------------------------------------------------------ FROM

    async def _from(self, stage: Any) -> _Stage:
        env = {k: v for k, v in self.meta_args.items() if v is not None}
        base = self._expand(stage.base, env)
        platform = self._expand(stage.platform, env) if stage.platform else self.options.platform
        if not base:
            raise InvalidArgument(f"base name ({stage.base}) should not be blank")
        if base.lower() in self.stages:
            parent = self.stages[base.lower()]
            image = parent.image
        elif base.lower() == "scratch":
            image = None
        else:
            image = await self._base_image(base, platform)
        config = dict((image.config.get("config") or {}) if image is not None else {})
        env = list(config.get("Env") or [])
        if not any(_env_key(e) == "PATH" for e in env):
            env.append(DEFAULT_PATH)  # Docker gives every stage a PATH
        config.update(Env=env, OpenStdin=False, StdinOnce=False)
        return _Stage(stage.index, stage.name, image, config, platform)

    async def _base_image(self, name: str, platform: str) -> Any:
        try:
            ref = parse_reference(name)
        except InvalidArgument:
            raise InvalidArgument(f"invalid reference format: {name}") from None
        if not self.options.pull:
            with contextlib.suppress(NotFound):
                return self.images.resolve(name)
        credentials = self.options.credentials(ref.domain) if self.options.credentials else None
        progress: list[dict] = []
        await self.images.pull(str(ref), platform or None, progress.append, credentials)
        for record in progress:  # after the pull: the callback may come from a worker thread
            await self.aux(record)
        return self.images.resolve(str(ref))

    async def _onbuild_triggers(self, state: _Stage) -> None:
        triggers = list(state.config.get("OnBuild") or [])
        if not triggers:
            return
        state.config["OnBuild"] = []
        await self.out(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n")
        for trigger in triggers:
            instruction = parse_instruction(trigger, self.escape)
            if instruction.keyword.upper() in _NOT_IN_ONBUILD:
                raise InvalidArgument(f"{instruction.keyword.upper()} isn't allowed as an ONBUILD trigger")
            await self._dispatch(state, instruction)

    # ------------------------------------------------------------------------------------------ dispatch

    async def _dispatch(self, state: _Stage, instruction: Any) -> None:
        keyword = instruction.keyword.upper()
        handler = getattr(self, f"_do_{keyword.lower()}", None)
        if handler is None:
            raise InvalidArgument(f"dockerfile parse error on line {instruction.line}: unknown instruction: {keyword}")
        await handler(state, instruction)

    def _expansion_env(self, state: _Stage) -> dict[str, str]:
        """What ``$VAR`` means in an instruction: the stage's ENV, then its ARGs with values (ENV wins)."""
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in state.config.get("Env") or [])
        for key, value in self._args_in_scope(state).items():
            env.setdefault(key, value)
        return env

    def _args_in_scope(self, state: _Stage) -> dict[str, str]:
        """Build args with a value that apply to this stage: declared ones, and the predefined proxy args given."""
        values = {k: v for k, v in state.args.items() if v is not None}
        for key in PROXY_ARGS:
            if key not in state.args and self.options.build_args.get(key) is not None:
                values[key] = self.options.build_args[key]  # type: ignore[assignment]
        return values

    def _run_build_args(self, state: _Stage) -> list[str]:
        """Docker's FilterAllowed: ``K=v`` for the build args in scope not shadowed by an ENV, sorted."""
        env_keys = {_env_key(e) for e in state.config.get("Env") or []}
        return sorted(f"{k}={v}" for k, v in self._args_in_scope(state).items() if k not in env_keys)

    # ------------------------------------------------------------------------------------------ metadata steps

    async def _commit_metadata(self, state: _Stage, comment: str, extra_key: object = None) -> None:
        """A step that changes only the config: Docker's ``#(nop)`` commit, with the cache."""
        probe = docker_config({**state.config, "Image": state.image_id,
                               "Cmd": [*state.shell, "#(nop) ", comment]})
        await self._commit(state, probe, extra_key=extra_key)

    async def _commit(self, state: _Stage, probe: dict, snapshot: str | None = None, extra_key: object = None,
                      work: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Find the step (``probe`` on ``state.image``) in the cache, or make it: ``work(snapshot key)`` first
        when the step writes files."""
        key = step_key({"probe": probe, "extra": extra_key, "author": state.author})
        parent = state.image_id or "scratch"
        if await self._use_cache(state, parent, key, probe):
            return
        if work is not None:
            snapshot = self._new_snapshot_key()
            await asyncio.to_thread(self.images.prepare_step, snapshot, state.image)
            self.snapshots.append(snapshot)
            await work(snapshot)
        config = docker_config({**state.config, "Image": state.image_id})
        created_by = " ".join(probe.get("Cmd") or [])
        extra: dict[str, object] = {"container_config": probe}
        if state.author:
            extra["author"] = state.author
        image = await asyncio.to_thread(self.images.commit_step, state.image, config, snapshot=snapshot,
                                        created_by=created_by, extra=extra, platform=state.platform or None)
        if snapshot is not None:
            self.snapshots.remove(snapshot)
        self.b.cache.record(parent, key, image.config_digest, image.target["digest"])
        state.image = image

    async def _use_cache(self, state: _Stage, parent: str, key: str, probe: dict) -> bool:
        """Take the step from the cache (this engine's steps, then the ``cache_from`` images) if it is there."""
        if self.options.nocache:
            return False
        cached = self._cached(parent, key)
        if cached is None and self.cache_sources:
            cached = await asyncio.to_thread(self._from_sources, state.image, probe)
        if cached is None:
            return False
        await self.out(" ---> Using cache\n")
        state.image = cached
        return True

    def _cached(self, parent: str, key: str) -> Any | None:
        found = self.b.cache.lookup(parent, key)
        if found is None:
            return None
        image = self.images.step_image(found[1])
        return image if image is not None and image.config_digest == found[0] else None

    def _from_sources(self, parent: Any | None, probe: dict) -> Any | None:
        """Docker's ``--cache-from`` match: a source image whose history starts with the parent's (and whose
        layers start with its layers) and whose next entry was made by this step's command. The source itself
        when that entry is its last, else the parent plus that step, restored from it."""
        history = list(parent.config.get("history") or []) if parent is not None else []
        diff_ids = list(parent.diff_ids) if parent is not None else []
        created_by = " ".join(probe.get("Cmd") or [])
        for source in self.cache_sources:
            theirs = list(source.config.get("history") or [])
            if len(theirs) <= len(history) or theirs[:len(history)] != history:
                continue
            if list(source.diff_ids[:len(diff_ids)]) != diff_ids:
                continue
            if theirs[len(history)].get("created_by") != created_by:
                continue
            if len(theirs) == len(history) + 1:
                return source
            self.cache_sources = [source]  # as Docker: keep to the one source that matched
            return self.images.restore_step(parent, source, len(history), probe)
        return None

    def _new_snapshot_key(self) -> str:
        self.serial += 1
        return f"{STEP_SNAPSHOT_PREFIX}{self.id}-{self.serial}"

    async def _do_cmd(self, state: _Stage, ins: Any) -> None:
        state.config["Cmd"] = list(ins.args) if ins.json_form else [*state.shell, ins.args[0]]
        state.config["ArgsEscaped"] = False
        state.cmd_set = True
        await self._commit_metadata(state, f"CMD {_go_quote_list(state.config['Cmd'])}")

    async def _do_entrypoint(self, state: _Stage, ins: Any) -> None:
        if ins.json_form:
            state.config["Entrypoint"] = list(ins.args)
        else:
            state.config["Entrypoint"] = [*state.shell, ins.args[0]] if ins.args and ins.args[0] else None
        if not state.cmd_set:
            state.config["Cmd"] = None  # Docker: an ENTRYPOINT drops the CMD inherited from the base
        await self._commit_metadata(state, f"ENTRYPOINT {_go_quote_list(state.config['Entrypoint'] or [])}")

    async def _do_env(self, state: _Stage, ins: Any) -> None:
        env = list(state.config.get("Env") or [])
        words = []
        expansion = self._expansion_env(state)  # every pair sees the environment from before the instruction
        for item in ins.args:
            key, _, value = item.partition("=")
            key, value = self._expand(key, expansion), self._expand(value, expansion)
            if not key:
                raise InvalidArgument(f"dockerfile parse error on line {ins.line}: ENV names can not be blank")
            entry = f"{key}={value}"
            keys = [_env_key(e) for e in env]
            if key in keys:
                env[keys.index(key)] = entry
            else:
                env.append(entry)
            state.config["Env"] = list(env)
            words.append(entry)
        await self._commit_metadata(state, "ENV " + " ".join(words))

    async def _do_label(self, state: _Stage, ins: Any) -> None:
        expansion = self._expansion_env(state)
        labels = dict(state.config.get("Labels") or {})
        words = []
        for item in ins.args:
            key, _, value = item.partition("=")
            key, value = self._expand(key, expansion), self._expand(value, expansion)
            labels[key] = value
            words.append(f"{key}={value}")
        state.config["Labels"] = labels
        await self._commit_metadata(state, "LABEL " + " ".join(words))

    async def _do_maintainer(self, state: _Stage, ins: Any) -> None:
        state.author = " ".join(ins.args).strip()  # not expanded, as in Docker
        await self._commit_metadata(state, f"MAINTAINER {state.author}")

    async def _do_expose(self, state: _Stage, ins: Any) -> None:
        expansion = self._expansion_env(state)
        ports: list[str] = []
        for word in (ins.args if ins.json_form else " ".join(ins.args).split()):
            ports.extend(expand_words(word, expansion, escape=self.escape))
        if ports:
            exposed = apply_changes([f"EXPOSE {' '.join(ports)}"], {}).get("ExposedPorts") or {}
            state.config["ExposedPorts"] = {**(state.config.get("ExposedPorts") or {}), **exposed}
        await self._commit_metadata(state, "EXPOSE " + " ".join(sorted(ports)))

    async def _do_user(self, state: _Stage, ins: Any) -> None:
        state.config["User"] = self._expand(" ".join(ins.args).strip(), self._expansion_env(state))
        await self._commit_metadata(state, f"USER {state.config['User']}")

    async def _do_volume(self, state: _Stage, ins: Any) -> None:
        expansion = self._expansion_env(state)
        words = list(ins.args) if ins.json_form else " ".join(ins.args).split()
        volumes = [self._expand(w, expansion) for w in words]
        if not volumes or any(not v.strip() for v in volumes):
            raise InvalidArgument(f"dockerfile parse error on line {ins.line}: VOLUME specified can not be an empty "
                                  "string")
        state.config["Volumes"] = {**(state.config.get("Volumes") or {}), **{v: {} for v in volumes}}
        await self._commit_metadata(state, f"VOLUME [{' '.join(volumes)}]")

    async def _do_stopsignal(self, state: _Stage, ins: Any) -> None:
        signal_name = self._expand(" ".join(ins.args).strip(), self._expansion_env(state))
        apply_changes([f"STOPSIGNAL {signal_name}"], {})  # validates it as Docker does
        state.config["StopSignal"] = signal_name
        await self._commit_metadata(state, f"STOPSIGNAL {signal_name}")

    async def _do_workdir(self, state: _Stage, ins: Any) -> None:
        path = self._expand(" ".join(ins.args).strip(), self._expansion_env(state))
        workdir = posixpath.normpath(path if path.startswith("/") else posixpath.join(
            state.config.get("WorkingDir") or "/", path))
        state.config["WorkingDir"] = workdir
        probe = docker_config({**state.config, "Image": state.image_id,
                               "Cmd": [*state.shell, f"#(nop) WORKDIR {workdir}"]})

        async def make_dir(snapshot: str) -> None:
            await self._in_mounted(snapshot, lambda root: _mkdir_in(root, workdir))

        await self._commit(state, probe, work=make_dir)

    async def _do_shell(self, state: _Stage, ins: Any) -> None:
        if not ins.json_form or not ins.args:
            raise InvalidArgument(f"dockerfile parse error on line {ins.line}: SHELL requires the arguments to be in "
                                  "JSON form")
        state.config["Shell"] = list(ins.args)
        await self._commit_metadata(state, f"SHELL [{' '.join(ins.args)}]")

    async def _do_healthcheck(self, state: _Stage, ins: Any) -> None:
        kind, command = ins.args[0].upper(), list(ins.args[1:])
        if kind == "NONE":
            health: dict[str, Any] = {"Test": ["NONE"]}
        else:
            health = {"Test": ["CMD", *command] if ins.json_form else ["CMD-SHELL", command[0]]}
            for flag, key in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod"),
                              ("start-interval", "StartInterval")):
                if ins.flags.get(flag):
                    health[key] = go_duration(ins.flags[flag])
            if ins.flags.get("retries"):
                health["Retries"] = int(ins.flags["retries"])
        state.config["Healthcheck"] = health
        await self._commit_metadata(state, f"HEALTHCHECK {_go_health(health)}")

    async def _do_onbuild(self, state: _Stage, ins: Any) -> None:
        trigger = ins.trigger
        expression = ins.args[0].strip()
        if trigger is not None and trigger.keyword.upper() in _NOT_IN_ONBUILD:
            raise InvalidArgument(f"{trigger.keyword.upper()} isn't allowed as an ONBUILD trigger")
        state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), expression]
        await self._commit_metadata(state, f"ONBUILD {expression}")

    async def _do_arg(self, state: _Stage, ins: Any) -> None:
        words = []
        for key, value in ins.pairs():
            expansion = self._expansion_env(state)
            default = self._expand(value, expansion) if value is not None else None
            words.append(f"{key}={default}" if default is not None else key)
            if key in self.options.build_args:
                self.used_args.add(key)
            if self.options.build_args.get(key) is not None:
                given = self.options.build_args[key]
            elif default is None and self.meta_args.get(key) is not None:
                given = self.meta_args[key]  # the global ARG's value, brought into the stage
            else:
                given = default
            state.args[key] = given
        await self._commit_metadata(state, "ARG " + " ".join(words))

    # ------------------------------------------------------------------------------------------ RUN

    async def _do_run(self, state: _Stage, ins: Any) -> None:
        if state.image is None:
            raise BuildFailed("RUN needs a base image with a shell: this stage is FROM scratch and still empty")
        for flag in ("mount", "network", "security"):
            if flag in ins.flags:
                raise InvalidArgument(f"dockerfile parse error on line {ins.line}: the --{flag} option requires "
                                      "BuildKit")
        cmd, script = self._run_command(state, ins)
        build_args = self._run_build_args(state)
        save_cmd = cmd
        if build_args:
            declared = [a for a in build_args if _env_key(a) in state.args or _env_key(a) not in PROXY_ARGS]
            save_cmd = [f"|{len(declared)}", *declared, *cmd]
        probe = docker_config({**state.config, "Image": state.image_id, "Cmd": save_cmd, "Entrypoint": None})
        key = step_key({"probe": probe, "author": state.author})
        if await self._use_cache(state, state.image_id, key, probe):
            return
        env = [*(state.config.get("Env") or []), *build_args]
        binds = []
        if script is not None:
            path = os.path.join(self.context.scratch_dir(), script.name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(expand_heredoc(script.content, dict(_env_pairs(env))) if script.expand else script.content)
            os.chmod(path, 0o755)
            binds.append(f"{path}:{HEREDOC_DIR}/{script.name}:ro")
        container_id = await self._run_container(state, cmd, env, binds)
        config = docker_config({**state.config, "Image": state.image_id})
        extra = {"container_config": probe, "container": container_id}
        if state.author:
            extra["author"] = state.author
        removing = self.options.rm or self.options.forcerm
        image = await asyncio.to_thread(self.images.commit_step, state.image, config, snapshot=container_id,
                                        created_by=" ".join(save_cmd), extra=extra,
                                        platform=state.platform or None, keep_snapshot=not removing)
        self.b.cache.record(state.image_id, key, image.config_digest, image.target["digest"])
        state.image = image
        if removing:
            await self._remove_container(container_id)

    def _run_command(self, state: _Stage, ins: Any) -> tuple[list[str], Any | None]:
        """The command RUN runs, and a heredoc to run as an executable file (``RUN <<EOF`` with ``#!``)."""
        if ins.json_form:
            return list(ins.args), None
        text, script = run_script(ins)
        if script is not None:
            return [f"{HEREDOC_DIR}/{script.name}"], script
        return [*state.shell, text], None

    async def _run_container(self, state: _Stage, cmd: list[str], env: list[str], binds: list[str]) -> str:
        body: dict[str, Any] = {
            "Image": state.image_id, "Cmd": cmd, "Entrypoint": [""], "Env": env,
            "WorkingDir": state.config.get("WorkingDir") or "", "User": state.config.get("User") or "",
            "Healthcheck": {"Test": ["NONE"]}, "AttachStdout": True, "AttachStderr": True,
            "Labels": {}, "HostConfig": {"Binds": binds} if binds else {},
        }
        if self.options.network_mode and self.options.network_mode != "default":
            body["HostConfig"]["NetworkMode"] = self.options.network_mode
        creating = asyncio.ensure_future(self.b.containers.create(None, body))
        try:
            container, _ = await asyncio.shield(creating)
        except asyncio.CancelledError:  # the container may still come to be: it goes then
            with contextlib.suppress(Exception):
                made, _ = await creating
                await asyncio.shield(self._discard_container(made.id))
            raise
        self.containers.append(container.id)
        exited = asyncio.ensure_future(self.b.containers.wait(container, "next-exit"))
        attached = self.b.containers.attach(container, stdin=False, stdout=True, stderr=True)
        try:
            await self.out(f" ---> Running in {container.id[:12]}\n")
            await self.b.containers.start_container(container.id)
            session = await attached
            if session is not None:
                try:
                    while (item := await session.read()) is not None:
                        text = item[1].decode("utf-8", "replace")
                        # Docker's builder shows the step's stderr in red (its stderr stream formatter)
                        await self.out(f"\x1b[91m{text}\x1b[0m" if item[0] == 2 else text)
                finally:
                    await session.close()
            code = await exited
        except BaseException:  # cancelled (the client left) or broken: the container goes, whatever rm says
            exited.cancel()
            attached.cancel()
            await asyncio.shield(self._discard_container(container.id))
            raise
        if code != 0:
            raise BuildFailed(f"The command '{' '.join(cmd)}' returned a non-zero code: {code}", code)
        return container.id

    async def _discard_container(self, container_id: str) -> None:
        with contextlib.suppress(SkiffError):
            await self.b.containers.remove(container_id, force=True, remove_volumes=True)
        if container_id in self.containers:
            self.containers.remove(container_id)

    async def _remove_container(self, container_id: str) -> None:
        try:
            await self.b.containers.remove(container_id, force=True, remove_volumes=True)
        except NotFound:
            pass
        if container_id in self.containers:
            self.containers.remove(container_id)
        await self.out(f"Removing intermediate container {container_id[:12]}\n")

    # ------------------------------------------------------------------------------------------ COPY and ADD

    async def _do_copy(self, state: _Stage, ins: Any) -> None:
        await self._copy(state, ins, "COPY")

    async def _do_add(self, state: _Stage, ins: Any) -> None:
        await self._copy(state, ins, "ADD")

    async def _copy(self, state: _Stage, ins: Any, kind: str) -> None:
        flags = dict(ins.flags or {})
        unknown = set(flags) - {"from", "chown", "chmod", "link"}
        if unknown or (kind == "ADD" and "from" in flags):
            flag = sorted(unknown or {"from"})[0]
            raise InvalidArgument(f"dockerfile parse error on line {ins.line}: Unknown flag: {flag}")
        expansion = self._expansion_env(state)
        words = list(ins.args)
        if len(words) < 2:
            raise InvalidArgument(f"dockerfile parse error on line {ins.line}: {kind} requires at least two arguments")
        sources_text = [w if w.startswith("<<") else self._expand(w, expansion) for w in words[:-1]]
        dest_word = self._expand(words[-1], expansion)
        dest = copying.destination(dest_word, state.config.get("WorkingDir") or "/")
        chown = self._expand(flags["chown"], expansion) if flags.get("chown") else None
        chmod = copying.parse_chmod(self._expand(flags["chmod"], expansion)) if flags.get("chmod") else None
        source_root, release = await self._source_root(flags.get("from"), expansion)
        scratch = self.context.scratch_dir()
        try:
            sources = await asyncio.to_thread(self._collect_sources, ins, kind, sources_text, source_root, scratch,
                                              expansion)
            hashes = await asyncio.to_thread(lambda: [tree_hash(s.path) for s in sources])
            src_hash = hashes[0] if len(hashes) == 1 else "multi:" + step_key(hashes)
            chown_text = f"--chown={chown}" if chown else ""  # run together with the hash, as Docker writes it
            probe = docker_config({**state.config, "Image": state.image_id,
                                   "Cmd": [*state.shell, f"#(nop) {kind} {chown_text}{src_hash} in {dest_word} "]})

            async def write(snapshot: str) -> None:
                def copy_into(root: str) -> None:
                    owner = copying.lookup_owner(root, chown) if chown else None
                    copying.Copier(root, owner, chmod).copy(sources, dest)
                await self._in_mounted(snapshot, copy_into)

            await self._commit(state, probe, extra_key={"chown": chown, "chmod": chmod,
                                                        "unpack": [s.unpack for s in sources]}, work=write)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            await release()

    def _collect_sources(self, ins: Any, kind: str, texts: list[str], root: str | None, scratch: str,
                         expansion: dict[str, str]) -> list[copying.Source]:
        heredocs = {h.name: h for h in (getattr(ins, "heredocs", None) or [])}
        found: list[copying.Source] = []
        for text in texts:
            marker = heredoc_marker(text) if text.startswith("<<") else None
            if marker is not None:
                doc = heredocs.get(marker.name)
                if doc is None:
                    raise InvalidArgument(f"dockerfile parse error on line {ins.line}: no heredoc named {marker.name}")
                name = marker.name
                path = os.path.join(scratch, name)
                content = expand_heredoc(doc.content, expansion) if doc.expand else doc.content
                with open(path, "w", encoding="utf-8") as f:
                    f.write(content)
                os.chmod(path, 0o644)
                found.append(copying.Source(path, name))
                continue
            if kind == "ADD" and copying.is_url(text):
                found.append(copying.fetch_url(text, scratch))
                continue
            base = root if root is not None else self.context.root
            try:
                rels = find_sources(base, text, in_context=root is None)
            except OutsideContext as e:
                raise BuildFailed(f"{kind} failed: {e}") from None
            except NotFound as e:
                raise BuildFailed(f"{kind} failed: {e}") from None
            for rel in rels:
                path = resolve_in_scope(base, rel)
                unpack = kind == "ADD" and os.path.isfile(path) and copying.is_archive(path)
                found.append(copying.Source(path, posixpath.basename(rel) or "", unpack))
        return found

    async def _source_root(self, source: str | None, expansion: dict[str, str]
                           ) -> tuple[str | None, Callable[[], Awaitable[None]]]:
        """For ``--from``: a mounted snapshot of the stage's or image's filesystem, and how to release it."""
        async def nothing() -> None:
            return None

        if not source:
            return None, nothing
        name = self._expand(source, expansion)
        stage = self.stages.get(name.lower())
        if stage is not None:
            image = stage.image
        else:
            image = await self._base_image(name, self.options.platform)
        key = self._new_snapshot_key()
        await asyncio.to_thread(self.images.prepare_step, key, image)
        self.snapshots.append(key)
        target = os.path.join(self.b.mounts_dir, key)
        os.makedirs(target, exist_ok=True)
        await asyncio.to_thread(self.images.mount_rootfs, key, target)
        self.mounted.append(target)

        async def release() -> None:
            await self._unmount(target)
            await self._drop_snapshot(key)

        return target, release

    async def _in_mounted(self, snapshot: str, work: Callable[[str], object]) -> None:
        """Run ``work(rootfs)`` in a thread with the snapshot mounted on a directory of the build's own."""
        target = os.path.join(self.b.mounts_dir, snapshot)
        os.makedirs(target, exist_ok=True)
        await asyncio.to_thread(self.images.mount_rootfs, snapshot, target)
        self.mounted.append(target)
        try:
            await asyncio.to_thread(work, target)
        except OSError as e:
            raise BuildFailed(f"failed to copy files: {e}") from None
        finally:
            await self._unmount(target)

    async def _unmount(self, target: str) -> None:
        if target in self.mounted:
            await asyncio.to_thread(self.images.unmount_rootfs, target)
            self.mounted.remove(target)
            with contextlib.suppress(OSError):
                os.rmdir(target)

    async def _drop_snapshot(self, key: str) -> None:
        if key in self.snapshots:
            await asyncio.to_thread(self.images.remove_rootfs, key)
            self.snapshots.remove(key)

    # ------------------------------------------------------------------------------------------ cleanup

    async def cleanup(self) -> None:
        """Unmount and remove what the build still holds; intermediate containers go unless a failure with
        ``rm`` (not ``forcerm``) keeps them, as Docker does."""
        for target in list(self.mounted):
            with contextlib.suppress(Exception):
                await self._unmount(target)
        for key in list(self.snapshots):
            with contextlib.suppress(Exception):
                await self._drop_snapshot(key)
        if self.options.forcerm:
            for container_id in list(self.containers):
                with contextlib.suppress(Exception):
                    await self._remove_container(container_id)


def _mkdir_in(root: str, path: str) -> None:
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = posixpath.join(current, part)
        host = resolve_in_scope(root, current)
        if not os.path.isdir(host):
            os.mkdir(host, 0o755)


def _go_duration(nanos: int) -> str:
    """Go's ``time.Duration.String`` for whole multiples (what HEALTHCHECK flags give)."""
    if nanos == 0:
        return "0s"
    out, rest = "", nanos
    hours, rest = divmod(rest, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    seconds = rest / 1e9
    if rest < 1_000_000_000 and not out:
        if rest % 1_000_000 == 0:
            return f"{rest // 1_000_000}ms"
        return f"{rest / 1e6:g}ms"
    return out + (f"{seconds:g}s")


def _go_health(health: dict) -> str:
    """Docker's history text for HEALTHCHECK: Go's ``%q`` of the HealthConfig pointer."""
    test = _go_quote_list(health.get("Test") or [])
    durations = " ".join(json.dumps(_go_duration(int(health.get(k) or 0)))
                         for k in ("Interval", "Timeout", "StartPeriod"))
    retries = int(health.get("Retries") or 0)
    return f"&{{{test} {durations} '\\x{retries:02x}'}}"
