"""Reading the deployment files under deploy/ for tests/unit/test_deploy.py: the compose file,
the Kubernetes manifests and their kustomization, rabbitmq.conf and enabled_plugins, systemd
units; where each deployment mounts a file; and the node's own loader run on the node.toml a
deployment carries, with placeholders for the files it names."""

from __future__ import annotations

import configparser
import re
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

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


def dockerfile_instructions() -> list[tuple[str, str]]:
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


def cli_accepts(args: list[str]) -> None:
    """The command exists: its --help answers (the real run needs a config and a broker)."""
    result = CliRunner().invoke(app, [*args[: args.index("--config")], "--help"])
    assert result.exit_code == 0, result.output


def compose_file() -> Doc:
    document: Doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return document


def manifests() -> list[Doc]:
    return [
        doc
        for name in ("rabbitmq.yaml", "node.yaml")
        for doc in yaml.safe_load_all((KUBERNETES / name).read_text())
    ]


def kustomization() -> Doc:
    document: Doc = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return document


def only(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def rabbitmq_conf(text: str) -> dict[str, str]:
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


def cluster_nodes(settings: dict[str, str]) -> set[str]:
    assert settings["cluster_formation.peer_discovery_backend"] == "classic_config"
    prefix = "cluster_formation.classic_config.nodes."
    return {value for key, value in settings.items() if key.startswith(prefix)}


def enabled_plugins(text: str) -> set[str]:
    """An enabled_plugins file: one Erlang list of atoms, ended by a full stop."""
    match = re.fullmatch(r"\s*\[([a-z0-9_,\s]*)\]\.\s*", text)
    assert match, "enabled_plugins is not an Erlang list of plugin names"
    return {name.strip() for name in match.group(1).split(",") if name.strip()}


def walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, (*path, key))
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, path)
    else:
        yield path, value


def named_paths(toml_text: str, folder: PurePosixPath) -> dict[tuple[str, ...], PurePosixPath]:
    """Every file and folder a node config names, as the running node sees it (relative paths
    against the config file's folder, as load_config resolves them)."""
    raw = tomllib.loads(toml_text)
    raw.setdefault("contact_points", {}).setdefault("keys", "contact-points")
    return {
        path: folder / value
        for path, value in walk(raw)
        if path[-1] in FILE_KEYS | FOLDER_KEYS and isinstance(value, str)
    }


def certificate(path: Path, common_name: str) -> None:
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


def validated(toml_text: str, config_path: str, root: Path) -> NodeConfig:
    """The node's own loader on a deployment's node.toml, placed at ``config_path`` under
    ``root`` (absolute paths in it moved under ``root`` too), with a placeholder for every file
    and folder it names (a certificate where the loader reads one): a key the model does not
    know, a missing table or a bad value fails here as it would fail the node at start."""
    moved = re.sub(r'"(/[^"]*)"', lambda m: f'"{root}{m.group(1)}"', toml_text)
    config = root / config_path.lstrip("/")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(moved)
    link_user = tomllib.loads(toml_text).get("link", {}).get("user", "placeholder")
    for key_path, named in named_paths(moved, PurePosixPath(config.parent)).items():
        target = Path(named)
        if key_path[-1] in FOLDER_KEYS:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if key_path[-1] in {"cert_file", "ca_file"}:
            certificate(target, link_user)
        else:
            target.write_text("placeholder\n")
            target.chmod(0o600)
    return load_config(config)


def under(path: PurePosixPath, folder: str) -> bool:
    return path == PurePosixPath(folder) or PurePosixPath(folder) in path.parents


def image_uid() -> int:
    runs = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    match = re.search(r"useradd [^&]*--uid (\d+)", runs)
    assert match, "the image's user has no fixed uid"
    return int(match.group(1))


def rabbitmq_services(compose: Doc) -> dict[str, Doc]:
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("rabbitmq:")
    }


def node_services(compose: Doc) -> dict[str, Doc]:
    """Services that run the image built from deploy/docker/Dockerfile."""
    found = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            dockerfile = (DOCKER / build["context"] / build["dockerfile"]).resolve()
            assert dockerfile == (DOCKER / "Dockerfile").resolve(), name
            found[name] = service
    return found


def targets(service: Doc, kind: str, default_folder: str) -> dict[str, str]:
    """A service's secrets or configs: container path -> source name."""
    found = {}
    for entry in service.get(kind, []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        found[target if target.startswith("/") else f"{default_folder}/{target}"] = source
    return found


def compose_volumes(service: Doc) -> dict[str, str]:
    """A service's volumes: container path -> source (a named volume or a host path)."""
    found = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        found[target] = source
    return found


def compose_provides(service: Doc, path: PurePosixPath) -> bool:
    files = targets(service, "secrets", "/run/secrets") | targets(service, "configs", "")
    return str(path) in files or any(under(path, v) for v in compose_volumes(service))


def compose_config_text(compose: Doc, service: Doc, target: str) -> str:
    source = targets(service, "configs", "")[target]
    text: str = (DOCKER / compose["configs"][source]["file"]).read_text()
    return text


def compose_node_toml(compose: Doc) -> tuple[str, str]:
    """The node.toml the replicas mount (one file for all) and where they mount it."""
    sources = set()
    for service in node_services(compose).values():
        argv = service["command"]
        config_path = argv[argv.index("--config") + 1]
        sources.add((targets(service, "configs", "")[config_path], config_path))
    assert len(sources) == 1, f"the replicas run different configs: {sources}"
    source, config_path = sources.pop()
    return (DOCKER / compose["configs"][source]["file"]).read_text(), config_path


def generated(kind: str) -> dict[str, set[str]]:
    """The Secrets or ConfigMaps kustomization.yaml makes: name -> their keys."""
    found = {}
    for generator in kustomization().get(f"{kind}Generator", []):
        assert set(generator) == {"name", "files"}, f"{generator['name']}: not from files only"
        found[generator["name"]] = {
            entry.split("=", 1)[0] if "=" in entry else PurePosixPath(entry).name
            for entry in generator["files"]
        }
    return found


def config_map_keys(docs: list[Doc]) -> dict[str, set[str]]:
    inline = {d["metadata"]["name"]: set(d["data"]) for d in docs if d["kind"] == "ConfigMap"}
    return inline | generated("configMap")


def pod_spec(docs: list[Doc], kind: str, name: str) -> Doc:
    pod: Doc = only(docs, kind, name)["spec"]["template"]["spec"]
    return pod


def volume_keys(volume: Doc, docs: list[Doc]) -> set[str] | None:
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
            names |= generated("secret").get(name, set())
        else:
            names |= config_map_keys(docs).get(reference["name"], set())
    return names


def k8s_provides(pod: Doc, container: Doc, path: PurePosixPath, docs: list[Doc]) -> bool:
    """The container sees ``path``: under one of its mounts, in the volume's keys when it is a
    Secret or ConfigMap; in an emptyDir an init container fills from a projected volume, among
    that volume's keys."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if not under(path, mount["mountPath"]):
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
            keys = volume_keys(volumes[sources[0]["name"]], docs)
            return keys is not None and relative in keys
        keys = volume_keys(volume, docs)
        return keys is None or relative == "." or relative in keys
    return False


def k8s_node_toml(docs: list[Doc]) -> tuple[str, str, Doc, Doc]:
    pod = pod_spec(docs, "Deployment", "mlanet-node")
    container = next(c for c in pod["containers"] if c["name"] == "node")
    config_path = container["args"][container["args"].index("--config") + 1]
    folder = PurePosixPath(config_path).parent
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(folder))
    assert mount["readOnly"] is True
    assert k8s_provides(pod, container, PurePosixPath(config_path), docs)
    text: str = only(docs, "ConfigMap", "mlanet-node")["data"]["node.toml"]
    return text, config_path, pod, container


def secret_references(docs: list[Doc]) -> Iterator[tuple[str, str | None]]:
    """(Secret name, key or None) for every Secret a manifest refers to."""
    for path, value in walk(docs):
        if path[-2:] == ("secret", "secretName"):
            yield value, None
    for doc in docs:
        for volume in doc.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    yield source["secret"]["name"], None
        for container in containers_of(doc):
            for entry in container.get("env", []):
                reference = entry.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    yield reference["name"], reference["key"]


def containers_of(doc: Doc) -> list[Doc]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def systemd_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    assert unit.read(DEPLOY / "systemd" / name), name
    return unit
