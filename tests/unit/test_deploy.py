"""Deployment files are parsed and checked: Docker, Kubernetes and systemd do not run here, so
these tests are what keeps the files true to the code and to each other. The node's config
each one carries is validated by the node's own loader; every file the config names is one the
deployment mounts; every secret a service or pod uses is declared, from a file; the RabbitMQ
clusters name their three nodes as the nodes are named; the replicas differ only in their name;
Prometheus scrapes each replica where it listens, and Grafana finds the dashboard."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from mlanet.nodes.cli.app import app
from mlanet.nodes.config import NodeConfig, load_config

DEPLOY = Path(__file__).parents[2] / "deploy"
DOCKER = DEPLOY / "docker"
KUBERNETES = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "mlanet-node.json"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# what a node's config names: files the node opens, and folders
FILE_KEYS = {"signing_key", "directory", "password_file", "cert_file", "key_file", "ca_file"}
FOLDER_KEYS = {"state_dir", "keys", "ca_folder"}
# read by the broker, which runs the links' shovels; the node only tries it when it diagnoses a
# link and does without (nodes/runtime/link_plan.py), so a replica need not mount it
BROKER_ONLY = {("link", "tls", "key_file")}
Doc = dict[str, Any]


# --- reading the files ---------------------------------------------------------------------------
def _dockerfile_instructions() -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            lines.append((word.upper(), rest))
            pending = ""
    return lines


def _cli_accepts(args: list[str]) -> None:
    """The command exists: its --help answers (the real run needs a config and a broker)."""
    result = CliRunner().invoke(app, [*args[: args.index("--config")], "--help"])
    assert result.exit_code == 0, result.output


def _compose() -> Doc:
    document: Doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return document


def _kubernetes() -> list[Doc]:
    return [
        doc
        for name in ("rabbitmq.yaml", "node.yaml")
        for doc in yaml.safe_load_all((KUBERNETES / name).read_text())
    ]


def _kustomization() -> Doc:
    document: Doc = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return document


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def _rabbitmq_conf(text: str) -> dict[str, str]:
    """rabbitmq.conf's sysctl-like lines as a mapping (a key given twice fails)."""
    settings: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, sep, value = line.partition("=")
            assert sep, f"not a setting: {line}"
            assert key.strip() not in settings, f"{key.strip()} given twice"
            settings[key.strip()] = value.strip()
    return settings


def _cluster_nodes(settings: dict[str, str]) -> set[str]:
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    prefix = "cluster_formation.classic_config.nodes."
    return {value for key, value in settings.items() if key.startswith(prefix)}


def _plugins(text: str) -> set[str]:
    """An enabled_plugins file: one Erlang list of atoms, ended by a full stop."""
    match = re.fullmatch(r"\s*\[([a-z0-9_,\s]*)\]\.\s*", text)
    assert match, "enabled_plugins is not an Erlang list of plugin names"
    return {name.strip() for name in match.group(1).split(",") if name.strip()}


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*path, key))
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, path)
    else:
        yield path, value


def _named_paths(toml_text: str, folder: PurePosixPath) -> dict[tuple[str, ...], PurePosixPath]:
    """Every file and folder a node config names, as the running node sees it (relative paths
    against the config file's folder, as load_config resolves them)."""
    raw = tomllib.loads(toml_text)
    raw.setdefault("contact_points", {}).setdefault("keys", "contact-points")
    return {
        path: folder / value
        for path, value in _walk(raw)
        if path[-1] in FILE_KEYS | FOLDER_KEYS and isinstance(value, str)
    }


def _certificate(path: Path, common_name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _validated(toml_text: str, config_path: str, root: Path) -> NodeConfig:
    """The node's own loader on a deployment's node.toml, placed at ``config_path`` under
    ``root`` (absolute paths in it moved under ``root`` too), with a placeholder for every file
    and folder it names (a certificate where the loader reads one): a key the model does not
    know, a missing table or a bad value fails here as it would fail the node at start."""
    moved = re.sub(r'"(/[^"]*)"', lambda m: f'"{root}{m.group(1)}"', toml_text)
    config = root / config_path.lstrip("/")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(moved)
    link_user = tomllib.loads(toml_text).get("link", {}).get("user", "placeholder")
    for key_path, named in _named_paths(moved, PurePosixPath(config.parent)).items():
        target = Path(named)
        if key_path[-1] in FOLDER_KEYS:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if key_path[-1] in {"cert_file", "ca_file"}:
            _certificate(target, link_user)
        else:
            target.write_text("placeholder\n")
            target.chmod(0o600)
    return load_config(config)


def _under(path: PurePosixPath, folder: str) -> bool:
    return path == PurePosixPath(folder) or PurePosixPath(folder) in path.parents


# --- every file ----------------------------------------------------------------------------------
def test_every_deploy_yaml_file_parses() -> None:
    """Every YAML file under deploy/ is valid YAML (the ones these tests read among them), and
    each Kubernetes document names its kind and API version."""
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    names = {path.relative_to(DEPLOY).as_posix() for path in files}
    assert {
        "docker/compose.yaml",
        "kubernetes/node.yaml",
        "kubernetes/rabbitmq.yaml",
        "kubernetes/kustomization.yaml",
        "prometheus/prometheus.yml",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/mlanet.yaml",
    } <= names
    for path in files:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents, path
        assert all(isinstance(doc, dict) for doc in documents), path
        if path.parent == KUBERNETES:
            assert all({"apiVersion", "kind"} <= set(doc) for doc in documents), path


def test_dockerfile_installs_the_packages_and_runs_the_node_unprivileged() -> None:
    instructions = _dockerfile_instructions()
    known = {"FROM", "WORKDIR", "COPY", "RUN", "USER", "VOLUME", "ENTRYPOINT", "CMD"}
    assert {word for word, _ in instructions} <= known
    copied = " ".join(rest for word, rest in instructions if word == "COPY")
    for package in ("schemas", "broker", "nodes", "pyproject.toml"):
        assert package in copied
    users = [rest for word, rest in instructions if word == "USER"]
    assert users
    assert users[-1] != "root"
    entry = yaml.safe_load(next(rest for word, rest in instructions if word == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(rest for word, rest in instructions if word == "CMD"))
    assert entry == ["mlanet"]
    _cli_accepts(cmd)


def _image_uid() -> int:
    runs = " ".join(rest for word, rest in _dockerfile_instructions() if word == "RUN")
    match = re.search(r"useradd [^&]*--uid (\d+)", runs)
    assert match, "the image's user has no fixed uid"
    return int(match.group(1))


# --- Docker Compose ------------------------------------------------------------------------------
def _rabbitmq_services(compose: Doc) -> dict[str, Doc]:
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("rabbitmq:")
    }


def _node_services(compose: Doc) -> dict[str, Doc]:
    """Services that run the image built from deploy/docker/Dockerfile."""
    found = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            dockerfile = (DOCKER / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile == (DOCKER / "Dockerfile").resolve(), name
            found[name] = service
    return found


def _targets(service: Doc, kind: str, default_folder: str) -> dict[str, str]:
    """A service's secrets or configs: container path -> source name."""
    found = {}
    for entry in service.get(kind, []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        found[target if target.startswith("/") else f"{default_folder}/{target}"] = source
    return found


def _compose_volumes(service: Doc) -> dict[str, str]:
    """A service's volumes: container path -> source (a named volume or a host path)."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        found[target] = source
    return found


def _compose_provides(service: Doc, path: PurePosixPath) -> bool:
    files = _targets(service, "secrets", "/run/secrets") | _targets(service, "configs", "")
    return str(path) in files or any(_under(path, v) for v in _compose_volumes(service))


def _compose_config_text(compose: Doc, service: Doc, target: str) -> str:
    source = _targets(service, "configs", "")[target]
    text: str = (DOCKER / compose["configs"][source]["file"]).read_text()
    return text


def _compose_node_toml(compose: Doc) -> tuple[str, str]:
    """The node.toml the replicas mount (one file for all) and where they mount it."""
    sources = set()
    for service in _node_services(compose).values():
        argv = service["command"]
        config_path = argv[argv.index("--config") + 1]
        sources.add((_targets(service, "configs", "")[config_path], config_path))
    assert len(sources) == 1, f"the replicas run different configs: {sources}"
    source, config_path = sources.pop()
    return (DOCKER / compose["configs"][source]["file"]).read_text(), config_path


def test_compose_runs_a_rabbitmq_cluster_of_three_sharing_one_cookie() -> None:
    """Three RabbitMQ nodes of the management image, each named as the cluster's classic config
    lists it (its hostname is its service name, which the others resolve), with the same
    rabbitmq.conf and plugins (management and shovel among them), and one Erlang cookie secret
    that the start script installs where Erlang reads it."""
    compose = _compose()
    rabbits = _rabbitmq_services(compose)
    assert len(rabbits) == 3
    cookies = set()
    for name, service in rabbits.items():
        assert service["image"].startswith("rabbitmq:3")
        assert "management" in service["image"]
        assert service["hostname"] == name, "the others resolve the service name"
        conf = _rabbitmq_conf(_compose_config_text(compose, service, "/etc/rabbitmq/rabbitmq.conf"))
        assert _cluster_nodes(conf) == {f"rabbit@{n}" for n in rabbits}
        plugins = _plugins(_compose_config_text(compose, service, "/etc/rabbitmq/enabled_plugins"))
        assert {"rabbitmq_management", "rabbitmq_shovel"} <= plugins
        secrets = _targets(service, "secrets", "/run/secrets")
        cookie = [path for path, source in secrets.items() if "cookie" in source]
        assert len(cookie) == 1, name
        cookies.add((cookie[0], secrets[cookie[0]]))
        script_path = service["entrypoint"][-1]
        script = _compose_config_text(compose, service, script_path)
        assert f"{cookie[0]} /var/lib/rabbitmq/.erlang.cookie" in script
        assert "-m 0400" in script
        assert "exec docker-entrypoint.sh rabbitmq-server" in script
        for key in ("ssl_options.cacertfile", "ssl_options.certfile", "ssl_options.keyfile"):
            assert conf[key] in secrets, f"{name}: {key} {conf[key]} is not mounted"
        assert service["healthcheck"]["test"]
    assert len(cookies) == 1, "the nodes of one cluster share one cookie"


def test_compose_runs_postgresql_with_a_healthcheck_and_its_password_from_a_secret() -> None:
    compose = _compose()
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    environment = postgres["environment"]
    assert "POSTGRES_PASSWORD" not in environment
    assert environment["POSTGRES_PASSWORD_FILE"] in _targets(postgres, "secrets", "/run/secrets")


def test_compose_runs_two_replicas_of_one_node_that_differ_only_in_their_name() -> None:
    """At least two replicas: the same command, config and secrets, different MLANET_REPLICA
    and state volumes, each started once the brokers and the database are healthy."""
    compose = _compose()
    services = compose["services"]
    nodes = _node_services(compose)
    assert len(nodes) >= 2
    names = [service["environment"]["MLANET_REPLICA"] for service in nodes.values()]
    assert all(names)
    assert len(set(names)) == len(names)
    _compose_node_toml(compose)  # one config for all
    first = next(iter(nodes.values()))
    for service in nodes.values():
        _cli_accepts(service["command"])
        assert service["image"] == first["image"]
        assert service["secrets"] == first["secrets"]
        assert service["configs"] == first["configs"]
        for dependency in [*_rabbitmq_services(compose), "postgres"]:
            assert service["depends_on"][dependency] == {"condition": "service_healthy"}
            assert services[dependency]["healthcheck"]["test"]
        assert service["read_only"] is True
        assert "ALL" in service["cap_drop"]
    states = [_compose_volumes(service)["/var/lib/mlanet"] for service in nodes.values()]
    assert len(set(states)) == len(states), "each replica has its own state volume"
    assert all(state in compose["volumes"] for state in states)


def test_compose_node_toml_is_a_valid_config_whose_every_file_is_mounted(tmp_path: Path) -> None:
    """The replicas' node.toml loads with the node's own loader and has [database]; every file
    and folder it names is mounted in each replica (a secret, a config or a volume), its
    database is the postgres service with the same password file, its broker the cluster."""
    compose = _compose()
    text, config_path = _compose_node_toml(compose)
    config = _validated(text, config_path, tmp_path)
    assert config.database is not None, "replicas share their state only through [database]"
    named = _named_paths(text, PurePosixPath(config_path).parent)
    nodes = _node_services(compose)
    for name, service in nodes.items():
        for key_path, path in named.items():
            if key_path not in BROKER_ONLY:
                assert _compose_provides(service, path), f"{name}: {'.'.join(key_path)} {path}"
        assert _under(named[("state_dir",)], "/var/lib/mlanet")
    postgres = compose["services"]["postgres"]
    url = urlsplit(config.database.url)
    assert url.hostname in compose["services"]
    assert compose["services"][url.hostname] is postgres
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.path.lstrip("/") == postgres["environment"]["POSTGRES_DB"]
    database_secret = _targets(postgres, "secrets", "/run/secrets")[
        postgres["environment"]["POSTGRES_PASSWORD_FILE"]
    ]
    for service in nodes.values():
        secrets = _targets(service, "secrets", "/run/secrets")
        assert secrets[str(named[("database", "password_file")])] == database_secret
    rabbits = _rabbitmq_services(compose)
    for host in (config.broker.host, urlsplit(config.broker.management_url).hostname):
        in_all = all(host in s["networks"]["default"]["aliases"] for s in rabbits.values())
        assert host in rabbits or in_all, f"{host} is not the RabbitMQ cluster"


def test_compose_link_files_are_where_the_brokers_and_the_replicas_read_them() -> None:
    """[link.tls] names paths the brokers read (they run the shovels): the certificate and key
    are mounted in every RabbitMQ node, the certificate in every replica, and the peers' CA
    folder is one volume the replicas write and the brokers read."""
    compose = _compose()
    text, config_path = _compose_node_toml(compose)
    named = _named_paths(text, PurePosixPath(config_path).parent)
    folder = str(named[("link", "tls", "ca_folder")])
    volumes = set()
    for name, service in _rabbitmq_services(compose).items():
        for key in ("cert_file", "key_file"):
            path = str(named[("link", "tls", key)])
            assert path in _targets(service, "secrets", "/run/secrets"), f"{name}: {path}"
        volumes.add(_compose_volumes(service)[folder])
    for service in _node_services(compose).values():
        volumes.add(_compose_volumes(service)[folder])
    assert len(volumes) == 1
    assert volumes <= set(compose["volumes"])


def test_compose_secrets_are_files_declared_once_and_documented() -> None:
    """Every secret a service uses is declared at the top, from a file in secrets/ that
    secrets/README.md lists; none is unused; no environment variable carries a password, a
    cookie or a token (only the path of its file)."""
    compose = _compose()
    declared = compose["secrets"]
    listed = (DOCKER / "secrets" / "README.md").read_text()
    used = set()
    for name, service in compose["services"].items():
        used |= set(_targets(service, "secrets", "/run/secrets").values())
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASS|SECRET|COOKIE|TOKEN|KEY", key):
                assert key.endswith("_FILE"), f"{name}: {key}={value} holds a secret's value"
    assert used == set(declared), (
        f"undeclared: {used - set(declared)}; unused: {set(declared) - used}"
    )
    for name, entry in declared.items():
        assert set(entry) == {"file"}, f"secret {name} is not a file"
        path = PurePosixPath(entry["file"])
        assert path.parent == PurePosixPath("secrets"), f"secret {name}: {path}"
        assert f"`{path.name}`" in listed, f"secrets/README.md does not list {path.name}"


def test_prometheus_scrapes_each_replica_where_its_operator_listens() -> None:
    """The operator surface listens on every interface (not loopback: Prometheus is another
    container) and Prometheus has one target per replica at the operator port, which the
    replicas' healthcheck asks too."""
    compose = _compose()
    text, _ = _compose_node_toml(compose)
    operator = tomllib.loads(text)["operator"]
    assert operator["host"] not in LOOPBACK
    port = operator["port"]
    prometheus = compose["services"]["prometheus"]
    config_file = next(
        source
        for target, source in _compose_volumes(prometheus).items()
        if target == "/etc/prometheus/prometheus.yml"
    )
    scrape = yaml.safe_load((DOCKER / config_file).read_text())
    targets = {
        target
        for job in scrape["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    nodes = _node_services(compose)
    assert {f"{name}:{port}" for name in nodes} <= targets
    for service in nodes.values():
        assert f":{port}/healthz" in " ".join(service["healthcheck"]["test"])


def test_grafana_provisions_prometheus_and_the_node_dashboard_file() -> None:
    """Grafana's provisioning folder is mounted where Grafana reads it; the dashboard provider
    reads a folder that holds deploy/grafana/mlanet-node.json; the data source is the
    Prometheus service."""
    compose = _compose()
    grafana = compose["services"]["grafana"]
    volumes = _compose_volumes(grafana)
    provisioning = (DOCKER / volumes["/etc/grafana/provisioning"]).resolve()
    assert provisioning == (DEPLOY / "grafana" / "provisioning").resolve()
    providers = yaml.safe_load((provisioning / "dashboards" / "mlanet.yaml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    dashboards = [
        (DOCKER / source).resolve()
        for target, source in volumes.items()
        if _under(PurePosixPath(target), folder) and target.endswith(".json")
    ]
    assert dashboards == [DASHBOARD.resolve()]
    assert DASHBOARD.is_file()
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    url = urlsplit(sources["datasources"][0]["url"])
    assert sources["datasources"][0]["type"] == "prometheus"
    assert url.hostname in compose["services"]
    assert compose["services"][url.hostname] is compose["services"]["prometheus"]
    assert url.port == 9090
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] in _targets(
        grafana, "secrets", "/run/secrets"
    )


# --- Kubernetes ----------------------------------------------------------------------------------
def _generated(kind: str) -> dict[str, set[str]]:
    """The Secrets or ConfigMaps kustomization.yaml makes: name -> their keys."""
    found = {}
    for generator in _kustomization().get(f"{kind}Generator", []):
        assert set(generator) == {"name", "files"}, f"{generator['name']}: not from files only"
        found[generator["name"]] = {
            entry.split("=", 1)[0] if "=" in entry else PurePosixPath(entry).name
            for entry in generator["files"]
        }
    return found


def _config_map_keys(docs: list[Doc]) -> dict[str, set[str]]:
    inline = {d["metadata"]["name"]: set(d["data"]) for d in docs if d["kind"] == "ConfigMap"}
    return inline | _generated("configMap")


def _pod(docs: list[Doc], kind: str, name: str) -> Doc:
    pod: Doc = _one(docs, kind, name)["spec"]["template"]["spec"]
    return pod


def _volume_keys(volume: Doc, docs: list[Doc]) -> set[str] | None:
    """The file names a Secret, ConfigMap or projected volume holds (None: any, for others)."""
    if "projected" in volume:
        sources = [
            (kind, ref) for source in volume["projected"]["sources"] for kind, ref in source.items()
        ]
    else:
        sources = [(kind, volume[kind]) for kind in ("secret", "configMap") if kind in volume]
        if not sources:
            return None
    names: set[str] = set()
    for kind, reference in sources:
        if reference.get("items"):
            names |= {item["path"] for item in reference["items"]}
        elif kind == "secret":
            name = reference.get("secretName", reference.get("name"))
            names |= _generated("secret").get(name, set())
        else:
            names |= _config_map_keys(docs).get(reference["name"], set())
    return names


def _k8s_provides(pod: Doc, container: Doc, path: PurePosixPath, docs: list[Doc]) -> bool:
    """The container sees ``path``: under one of its mounts, in the volume's keys when it is a
    Secret or ConfigMap; in an emptyDir an init container fills from a projected volume, among
    that volume's keys."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if not _under(path, mount["mountPath"]):
            continue
        volume = volumes[mount["name"]]
        relative = path.relative_to(mount["mountPath"]).as_posix()
        if "emptyDir" in volume:
            filled = [
                init_mount["mountPath"]
                for init in pod.get("initContainers", [])
                for init_mount in init["volumeMounts"]
                if init_mount["name"] == mount["name"]
            ]
            if not filled:
                return True  # a folder the node writes itself
            init = next(
                i
                for i in pod["initContainers"]
                if any(m["name"] == mount["name"] for m in i["volumeMounts"])
            )
            sources = [m for m in init["volumeMounts"] if volumes[m["name"]].get("projected")]
            assert len(sources) == 1
            assert sources[0]["mountPath"] in " ".join(init["command"])
            keys = _volume_keys(volumes[sources[0]["name"]], docs)
            return keys is not None and relative in keys
        keys = _volume_keys(volume, docs)
        return keys is None or relative == "." or relative in keys
    return False


def _k8s_node_toml(docs: list[Doc]) -> tuple[str, str, Doc, Doc]:
    pod = _pod(docs, "Deployment", "mlanet-node")
    container = next(c for c in pod["containers"] if c["name"] == "node")
    config_path = container["args"][container["args"].index("--config") + 1]
    folder = PurePosixPath(config_path).parent
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(folder))
    assert mount["readOnly"] is True
    assert _k8s_provides(pod, container, PurePosixPath(config_path), docs)
    text: str = _one(docs, "ConfigMap", "mlanet-node")["data"]["node.toml"]
    return text, config_path, pod, container


def test_kubernetes_runs_the_node_as_two_unprivileged_replicas() -> None:
    """A Deployment of two or more replicas, each named after its pod (MLANET_REPLICA from the
    downward API), unprivileged as the image's user, ready when /healthz answers and alive
    while the operator port answers."""
    docs = _kubernetes()
    deployment = _one(docs, "Deployment", "mlanet-node")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    text, _, pod, container = _k8s_node_toml(docs)
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["fsGroup"] == _image_uid()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    _cli_accepts(container["args"])
    replica = next(e for e in container["env"] if e["name"] == "MLANET_REPLICA")
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    port = tomllib.loads(text)["operator"]["port"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        target = container[probe]["httpGet"]["port"]
        assert ports.get(target, target) == port, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_kubernetes_node_toml_is_a_valid_config_whose_every_file_is_mounted(
    tmp_path: Path,
) -> None:
    """The ConfigMap's node.toml loads with the node's own loader and has [database]; every
    file and folder it names is in the node container: the relative ones among the keys the
    init container copies into the config folder, the others under a mount that holds them."""
    docs = _kubernetes()
    text, config_path, pod, container = _k8s_node_toml(docs)
    config = _validated(text, config_path, tmp_path)
    assert config.database is not None, "replicas share their state only through [database]"
    assert tomllib.loads(text)["operator"]["host"] not in LOOPBACK
    for key_path, path in _named_paths(text, PurePosixPath(config_path).parent).items():
        if key_path not in BROKER_ONLY:
            assert _k8s_provides(pod, container, path, docs), f"{'.'.join(key_path)} {path}"


def test_kubernetes_runs_a_rabbitmq_cluster_of_three() -> None:
    """A StatefulSet of three under a headless Service, each node named as the classic config
    lists it, the cookie copied owner-only from its Secret, TLS files and the link files at
    the paths rabbitmq.conf and the node's config name."""
    docs = _kubernetes()
    statefulset = _one(docs, "StatefulSet", "rabbitmq")
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    headless = _one(docs, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == spec["selector"]["matchLabels"]
    pod = spec["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "rabbitmq")
    assert container["image"].startswith("rabbitmq:3")
    assert "management" in container["image"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"
    assert env["RABBITMQ_NODENAME"]["value"] == f"rabbit@$(POD_NAME).{spec['serviceName']}"
    config_map = _one(docs, "ConfigMap", "rabbitmq-config")["data"]
    conf = _rabbitmq_conf(config_map["rabbitmq.conf"])
    name = statefulset["metadata"]["name"]
    assert _cluster_nodes(conf) == {f"rabbit@{name}-{i}.{spec['serviceName']}" for i in range(3)}
    assert {"rabbitmq_management", "rabbitmq_shovel"} <= _plugins(config_map["enabled_plugins"])
    for key in ("ssl_options.cacertfile", "ssl_options.certfile", "ssl_options.keyfile"):
        assert _k8s_provides(pod, container, PurePosixPath(conf[key]), docs), key
    volumes = {v["name"]: v for v in pod["volumes"]}
    cookie = next(
        v for v in pod["volumes"] if "cookie" in v.get("secret", {}).get("secretName", "")
    )
    init = next(
        i
        for i in pod["initContainers"]
        if any(m["name"] == cookie["name"] for m in i["volumeMounts"])
    )
    cookie_mount = next(m for m in init["volumeMounts"] if m["name"] == cookie["name"])
    (key,) = _volume_keys(volumes[cookie["name"]], docs) or {""}
    assert (
        f"-m 0400 {cookie_mount['mountPath']}/{key} /var/lib/rabbitmq/.erlang.cookie"
        in init["command"][-1]
    )
    text, config_path, node_pod, node = _k8s_node_toml(docs)
    named = _named_paths(text, PurePosixPath(config_path).parent)
    for key_path in (("link", "tls", "cert_file"), ("link", "tls", "key_file")):
        assert _k8s_provides(pod, container, named[key_path], docs), key_path
    folder = str(named[("link", "tls", "ca_folder")])
    claims = set()
    for each_pod, each in ((pod, container), (node_pod, node)):
        mount = next(m for m in each["volumeMounts"] if m["mountPath"] == folder)
        volume = next(v for v in each_pod["volumes"] if v["name"] == mount["name"])
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    (claim,) = claims
    assert "ReadWriteMany" in _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]


def _secret_references(docs: list[Doc]) -> Iterator[tuple[str, str | None]]:
    """(Secret name, key or None) for every Secret a manifest refers to."""
    for path, value in _walk(docs):
        if path[-2:] == ("secret", "secretName"):
            yield value, None
    for doc in docs:
        for volume in doc.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    yield source["secret"]["name"], None
        for container in _containers(doc):
            for entry in container.get("env", []):
                reference = entry.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    yield reference["name"], reference["key"]


def _containers(doc: Doc) -> list[Doc]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def test_kubernetes_secrets_come_from_files_and_every_reference_is_made() -> None:
    """kustomization.yaml lists every manifest and makes every Secret the manifests use (with
    the key asked for) from a file in secrets/ that README.md lists; no manifest holds a
    Secret's value; every ConfigMap used is a manifest's, a generated one, or one README.md
    tells the operator to create."""
    docs = _kubernetes()
    kustomization = _kustomization()
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    assert not [d for d in docs if d["kind"] == "Secret"], "a Secret's value in a manifest"
    generated = _generated("secret")
    readme = (KUBERNETES / "README.md").read_text()
    for generator in kustomization["secretGenerator"]:
        for entry in generator["files"]:
            path = PurePosixPath(entry.split("=", 1)[-1])
            assert path.parent == PurePosixPath("secrets"), entry
            assert f"`secrets/{path.name}`" in readme, f"README.md does not list {path}"
    references = list(_secret_references(docs))
    assert references
    for name, key in references:
        assert name in generated, f"Secret {name} is made nowhere"
        assert key is None or key in generated[name], f"Secret {name} has no key {key}"
    assert {name for name, _ in references} == set(generated), "a Secret nobody uses"
    made = set(_config_map_keys(docs)) | set(re.findall(r"kubectl create configmap (\S+)", readme))
    for where, value in _walk(docs):
        if where[-2:] == ("configMap", "name"):
            assert value in made, f"ConfigMap {value} is made nowhere"


# --- systemd -------------------------------------------------------------------------------------
def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    assert unit.read(DEPLOY / "systemd" / name), name
    return unit


def test_systemd_unit_runs_the_node_and_restarts_it() -> None:
    service = _unit("mlanet-node.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/mlanet")
    _cli_accepts(argv[1:])
    assert service["Restart"] == "on-failure"
    assert service["User"] != "root"
    assert service["NoNewPrivileges"] == "true"


@pytest.mark.parametrize("section", ["Service", "Install"])
def test_systemd_template_runs_replica_i_hardened_as_the_single_unit(section: str) -> None:
    """mlanet-node@.service runs the same command with --replica %i, and every setting of the
    single unit's [Service] and [Install] (user, restart, hardening, state folder) is the same."""
    single = _unit("mlanet-node.service")[section]
    template = _unit("mlanet-node@.service")[section]
    for key, value in single.items():
        if key != "ExecStart":
            assert template.get(key) == value, key
    if section == "Service":
        argv = shlex.split(template["ExecStart"])
        assert argv[argv.index("--replica") + 1] == "%i"
        assert argv[: argv.index("--replica")] == shlex.split(single["ExecStart"])
        _cli_accepts(argv[1:])
