"""``skiff compose``'s loading, interpolation, validation, conversion and planning, without an engine."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from skiff import errors
from skiff.cli.compose import convert, model
from skiff.cli.compose.convergence import plan_service
from skiff.cli.compose.interpolation import MissingVariable, interpolate, parse_env_file
from skiff.cli.compose.loader import load_project, normalize_project_name, parse_duration, parse_size


def write(directory: Path, text: str, name: str = "compose.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def load(directory: Path, text: str, **kwargs) -> model.Project:  # type: ignore[no-untyped-def]
    write(directory, text)
    return load_project(cwd=str(directory), environ=kwargs.pop("environ", {}), **kwargs)


# ---------------------------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize(("text", "expected"), [
    ("$A and ${A}", "a and a"),
    ("${UNSET}", ""),
    ("${UNSET:-default}", "default"),
    ("${EMPTY:-default}", "default"),
    ("${EMPTY-default}", ""),
    ("${UNSET-default}", "default"),
    ("${A:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET:-${A}-nested}", "a-nested"),
    ("$$A costs $$5", "$A costs $5"),
    ("${A:?never used}", "a"),
])
def test_interpolation(text: str, expected: str) -> None:
    assert interpolate(text, {"A": "a", "EMPTY": ""}) == expected


def test_required_variables_and_bad_templates() -> None:
    with pytest.raises(MissingVariable, match="required variable TAG is missing a value: set TAG"):
        interpolate("img:${TAG:?set TAG}", {})
    with pytest.raises(MissingVariable, match=r"required variable TAG is missing a value$"):
        interpolate("${TAG:?}", {"TAG": ""})
    assert interpolate("${TAG?}", {"TAG": ""}) == ""
    for bad in ("${", "${A", "$1", "${A!b}"):
        with pytest.raises(errors.InvalidArgument, match="invalid interpolation format"):
            interpolate(bad, {"A": "x"})
    warnings: list[str] = []
    interpolate("${NOPE}", {}, warnings.append)
    assert warnings == ['The "NOPE" variable is not set. Defaulting to a blank string.']


def test_env_file_syntax() -> None:
    text = """
        # comment
        export A=1
        B='literal $A'
        C="quoted ${A}\\n"
        D=plain # trailing comment
        E
        F=
    """
    assert parse_env_file(textwrap.dedent(text), lookup={"E": "from-shell"}) == {
        "A": "1", "B": "literal $A", "C": "quoted 1\n", "D": "plain", "E": "from-shell", "F": ""}


def test_dotenv_interpolation_and_shell_precedence(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TAG=from-dotenv\nPORT=8080\n")
    project = load(tmp_path, """
        services:
          web:
            image: "busybox:${TAG}"
            ports: ["${PORT}:80"]
    """, environ={"TAG": "from-shell"})
    assert project.services["web"]["image"] == "busybox:from-shell"
    assert project.services["web"]["ports"][0]["published"] == "8080"
    other = tmp_path / "other.env"
    other.write_text("TAG=other\nPORT=1\n")
    project = load_project(cwd=str(tmp_path), environ={}, env_files=[str(other)])
    assert project.services["web"]["image"] == "busybox:other"


def test_required_variable_error_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"error while interpolating services\.web\.image: required "
                       r"variable TAG is missing a value: pick a tag"):
        load(tmp_path, """
            services:
              web: {image: "busybox:${TAG:?pick a tag}"}
        """)


# ---------------------------------------------------------------------------------------------- names, validation


def test_project_name_from_directory_normalised(tmp_path: Path) -> None:
    assert normalize_project_name("My App.v2") == "myappv2"
    assert normalize_project_name("__x-Y") == "x-y"
    directory = tmp_path / "Demo_App"
    directory.mkdir()
    project = load(directory, "services: {web: {image: busybox}}")
    assert project.name == "demo_app"
    assert load(directory, "name: named\nservices: {web: {image: busybox}}").name == "named"
    assert load(directory, "name: named\nservices: {web: {image: busybox}}", project_name="cli").name == "cli"
    assert load(directory, "services: {web: {image: busybox}}", environ={"COMPOSE_PROJECT_NAME": "env"}).name == "env"
    with pytest.raises(errors.InvalidArgument, match='invalid project name "Bad Name"'):
        load(directory, "services: {web: {image: busybox}}", project_name="Bad Name")


@pytest.mark.parametrize(("text", "message"), [
    ("services: {web: {image: busybox, imagee: x}}", r"services\.web Additional property imagee is not allowed"),
    ("services: {web: {image: busybox}}\nvolumez: {}", r"\(root\) Additional property volumez is not allowed"),
    ("services: {web: {image: busybox, healthcheck: {tset: x}}}",
     r"services\.web\.healthcheck Additional property tset is not allowed"),
    ("services: {web: {image: busybox, ports: [{target: 80, publish: 1}]}}",
     r"services\.web\.ports\[0\] Additional property publish is not allowed"),
    ("services: {web: {image: busybox, depends_on: {db: {condition: service_ready}}}, db: {image: busybox}}",
     "must be one of service_started"),
    ("services: {web: {image: busybox, links: [db]}}", r"services\.web\.links is not supported by skiff compose"),
    ("services: {web: {command: x}}", 'service "web" has neither an image nor a build context'),
    ("services: {web: {image: busybox, depends_on: [nope]}}", 'service "web" depends on undefined service "nope"'),
    ("services: {web: {image: busybox, networks: [back]}}", 'service "web" refers to undefined network back'),
    ("services: {web: {image: busybox, volumes: ['data:/d']}}", 'service "web" refers to undefined volume data'),
    ("networks: {n: {drivr: bridge}}\nservices: {web: {image: busybox}}",
     r"networks\.n Additional property drivr is not allowed"),
])
def test_invalid_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        load(tmp_path, text)


def test_dependency_cycle_names_the_services(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="dependency cycle detected: a -> b -> c -> a"):
        load(tmp_path, """
            services:
              a: {image: busybox, depends_on: [b]}
              b: {image: busybox, depends_on: {c: {condition: service_healthy}}}
              c: {image: busybox, depends_on: [a]}
        """)


def test_profiles(tmp_path: Path) -> None:
    text = """
        services:
          web: {image: busybox}
          debug: {image: busybox, profiles: [dev]}
    """
    assert list(load(tmp_path, text).services) == ["web"]
    assert list(load(tmp_path, text, profiles=["dev"]).services) == ["web", "debug"]
    assert list(load(tmp_path, text, environ={"COMPOSE_PROFILES": "dev"}).services) == ["web", "debug"]
    with pytest.raises(errors.InvalidArgument, match='service "debug" was pulled in as a dependency of service "web"'):
        load(tmp_path, """
            services:
              web: {image: busybox, depends_on: [debug]}
              debug: {image: busybox, profiles: [dev]}
        """)


# ---------------------------------------------------------------------------------------------- normalisation


def test_short_and_long_syntax_normalise_alike(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("FROM_FILE=1\nOVERRIDDEN=file\n")
    project = load(tmp_path, """
        services:
          web:
            image: busybox
            command: sh -c 'echo "hi there"'
            env_file: app.env
            environment: {OVERRIDDEN: yaml, FROM_SHELL: null, FLAG: true}
            ports: ["8080:80", "127.0.0.1:9000-9001:90-91/udp", {target: 443, published: 8443, host_ip: 127.0.0.1}]
            volumes:
              - data:/data:ro,nocopy
              - ./site:/site
              - /anon
              - {type: tmpfs, target: /scratch, tmpfs: {size: 1000}}
            extra_hosts: ["db=10.0.0.2", "cache:10.0.0.3"]
            healthcheck: {test: curl -f localhost, interval: 1m30s, timeout: 500ms, retries: 2}
            restart: on-failure:3
            deploy: {replicas: 2, resources: {limits: {cpus: '0.5', memory: 64M, pids: 50}}}
            read_only: "true"
        volumes: {data: {}}
    """, environ={"FROM_SHELL": "shell"})
    web = project.services["web"]
    assert web["command"] == ["sh", "-c", 'echo "hi there"']
    assert web["environment"] == {"FROM_FILE": "1", "OVERRIDDEN": "yaml", "FROM_SHELL": "shell", "FLAG": "true"}
    assert [(p["host_ip"], p["published"], p["target"], p["protocol"]) for p in web["ports"]] == [
        ("", "8080", 80, "tcp"), ("127.0.0.1", "9000", 90, "udp"), ("127.0.0.1", "9001", 91, "udp"),
        ("127.0.0.1", "8443", 443, "tcp")]
    assert web["volumes"][0] == {"type": "volume", "source": "data", "target": "/data", "read_only": True,
                                 "volume": {"nocopy": True}}
    assert web["volumes"][1]["source"] == str(tmp_path / "site") and web["volumes"][1]["type"] == "bind"
    assert web["volumes"][2] == {"type": "volume", "target": "/anon"}
    assert web["healthcheck"] == {"test": ["CMD-SHELL", "curl -f localhost"], "interval": "1m30s",
                                  "timeout": "500ms", "retries": 2}
    assert web["read_only"] is True
    assert model.replicas(web) == 2

    body = convert.create_body(project, "web", 2, image_id="sha256:abc")
    labels = body["Labels"]
    assert labels[model.PROJECT] == project.name and labels[model.SERVICE] == "web"
    assert labels[model.NUMBER] == "2" and labels[model.ONEOFF] == "False"
    assert labels[model.CONFIG_HASH] == model.config_hash(web) and labels[model.IMAGE] == "sha256:abc"
    assert labels[model.WORKING_DIR] == str(tmp_path)
    assert body["Healthcheck"] == {"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 90_000_000_000,
                                   "Timeout": 500_000_000, "Retries": 2}
    hc = body["HostConfig"]
    assert hc["PortBindings"]["80/tcp"] == [{"HostIp": "", "HostPort": "8080"}]
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert hc["NanoCpus"] == 500_000_000 and hc["Memory"] == 64 << 20 and hc["PidsLimit"] == 50
    assert hc["ExtraHosts"] == ["db:10.0.0.2", "cache:10.0.0.3"]
    assert hc["Binds"] == [f"{tmp_path / 'site'}:/site"]
    assert {"Type": "volume", "Source": f"{project.name}_data", "Target": "/data", "ReadOnly": True,
            "VolumeOptions": {"NoCopy": True}} in hc["Mounts"]
    assert {"Type": "tmpfs", "Target": "/scratch", "TmpfsOptions": {"SizeBytes": 1000}} in hc["Mounts"]
    assert hc["ReadonlyRootfs"] is True and hc["NetworkMode"] == f"{project.name}_default"
    assert body["NetworkingConfig"] == {"EndpointsConfig": {f"{project.name}_default": {"Aliases": ["web"]}}}


def test_secrets_and_configs_are_read_only_binds(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("s3cret")
    (tmp_path / "app.conf").write_text("x=1")
    project = load(tmp_path, """
        services:
          web:
            image: busybox
            secrets: [pw]
            configs: [{source: conf, target: /etc/app.conf}]
        secrets: {pw: {file: ./pw.txt}}
        configs: {conf: {file: ./app.conf}}
    """)
    binds = convert.create_body(project, "web", 1)["HostConfig"]["Binds"]
    assert binds == [f"{tmp_path / 'pw.txt'}:/run/secrets/pw:ro", f"{tmp_path / 'app.conf'}:/etc/app.conf:ro"]


def test_override_files_merge(tmp_path: Path) -> None:
    write(tmp_path, """
        services:
          web: {image: busybox, environment: [A=1, B=1], ports: ["80:80"], command: [a]}
    """)
    write(tmp_path, """
        services:
          web: {environment: {B: 2}, ports: ["443:443"], command: [b]}
    """, "override.yaml")
    project = load_project(["compose.yaml", "override.yaml"], cwd=str(tmp_path), environ={})
    web = project.services["web"]
    assert web["environment"] == {"A": "1", "B": "2"}
    assert [p["target"] for p in web["ports"]] == [80, 443]
    assert web["command"] == ["b"]


def test_config_hash_ignores_scale_and_dependencies(tmp_path: Path) -> None:
    base = load(tmp_path, "services: {web: {image: busybox, depends_on: [db]}, db: {image: busybox}}")
    scaled = load(tmp_path, "services: {web: {image: busybox, deploy: {replicas: 3}}, db: {image: busybox}}")
    changed = load(tmp_path, "services: {web: {image: busybox, environment: [X=1]}, db: {image: busybox}}")
    web = model.config_hash(base.services["web"])
    assert web == model.config_hash(scaled.services["web"])
    assert web != model.config_hash(changed.services["web"])
    assert model.config_hash(base.services["db"]) == model.config_hash(changed.services["db"])


def test_durations_and_sizes() -> None:
    assert parse_duration("1m30s") == 90 and parse_duration("250ms") == 0.25 and parse_duration(5) == 5
    assert parse_size("64m") == 64 << 20 and parse_size("1GB") == 1 << 30 and parse_size(100) == 100
    with pytest.raises(errors.InvalidArgument):
        parse_duration("10 seconds")


# ---------------------------------------------------------------------------------------------- planning


def container(number: int, config_hash: str, state: str = "running") -> dict:
    return {"Id": f"id{number}", "Names": [f"/p-web-{number}"], "State": state,
            "Labels": {model.NUMBER: str(number), model.CONFIG_HASH: config_hash}}


def kinds(actions: list) -> list[tuple[str, int]]:
    return [(a.kind, a.number) for a in actions]


def test_plan_converges_like_compose() -> None:
    assert kinds(plan_service("h", 2, [])) == [("create", 1), ("create", 2)]
    assert kinds(plan_service("h", 1, [container(1, "h")])) == [("keep", 1)]
    assert kinds(plan_service("h", 1, [container(1, "h", "exited")])) == [("start", 1)]
    assert kinds(plan_service("new", 1, [container(1, "old")])) == [("recreate", 1)]
    assert kinds(plan_service("new", 1, [container(1, "old")], no_recreate=True)) == [("keep", 1)]
    assert kinds(plan_service("h", 1, [container(1, "h")], force_recreate=True)) == [("recreate", 1)]
    assert kinds(plan_service("h", 1, [container(1, "h"), container(2, "h"), container(3, "h")])) == [
        ("remove", 2), ("remove", 3), ("keep", 1)]
    # scaling up continues after the highest number
    assert kinds(plan_service("h", 3, [container(2, "h")])) == [("keep", 2), ("create", 3), ("create", 4)]
    # a new image (pulled, rebuilt) recreates; an unknown one does not
    pulled = {**container(1, "h"), "Labels": {model.NUMBER: "1", model.CONFIG_HASH: "h", model.IMAGE: "sha256:a"}}
    assert kinds(plan_service("h", 1, [pulled], image_id="sha256:b")) == [("recreate", 1)]
    assert kinds(plan_service("h", 1, [pulled], image_id="sha256:a")) == [("keep", 1)]
    assert kinds(plan_service("h", 1, [pulled], image_id="")) == [("keep", 1)]
    # scaling down keeps the up-to-date ones
    assert kinds(plan_service("h", 1, [container(1, "old"), container(2, "h")])) == [("remove", 1), ("keep", 2)]
