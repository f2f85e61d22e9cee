"""Deployment files are parsed and checked: Docker, Kubernetes and systemd do not run here, so
these tests are what keeps the files true to the code and to each other. The node's config
each one carries is validated by the node's own loader; every file the config names is one the
deployment mounts; every secret a service or pod uses is declared, from a file; the RabbitMQ
clusters name their three nodes as the nodes are named; the replicas differ only in their name;
Prometheus scrapes each replica where it listens, and Grafana finds the dashboard."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit import deploykit as kit
from tests.unit.deploykit import BROKER_ONLY, DASHBOARD, DEPLOY, DOCKER, KUBERNETES, LOOPBACK


# --- reading the files ---------------------------------------------------------------------------
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
    instructions = kit.dockerfile_instructions()
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
    kit.cli_accepts(cmd)


# --- Docker Compose ------------------------------------------------------------------------------
def test_compose_runs_a_rabbitmq_cluster_of_three_sharing_one_cookie() -> None:
    """Three RabbitMQ nodes of the management image, each named as the cluster's classic config
    lists it (its hostname is its service name, which the others resolve), with the same
    rabbitmq.conf and plugins (management and shovel among them), and one Erlang cookie secret
    that the start script installs where Erlang reads it."""
    compose = kit.compose_file()
    rabbits = kit.rabbitmq_services(compose)
    assert len(rabbits) == 3
    cookies = set()
    for name, service in rabbits.items():
        assert service["image"].startswith("rabbitmq:3")
        assert "management" in service["image"]
        assert service["hostname"] == name, "the others resolve the service name"
        conf = kit.rabbitmq_conf(
            kit.compose_config_text(compose, service, "/etc/rabbitmq/rabbitmq.conf")
        )
        assert kit.cluster_nodes(conf) == {f"rabbit@{n}" for n in rabbits}
        plugins = kit.enabled_plugins(
            kit.compose_config_text(compose, service, "/etc/rabbitmq/enabled_plugins")
        )
        assert {"rabbitmq_management", "rabbitmq_shovel"} <= plugins
        secrets = kit.targets(service, "secrets", "/run/secrets")
        cookie = [path for path, source in secrets.items() if "cookie" in source]
        assert len(cookie) == 1, name
        cookies.add((cookie[0], secrets[cookie[0]]))
        script_path = service["entrypoint"][-1]
        script = kit.compose_config_text(compose, service, script_path)
        assert f"{cookie[0]} /var/lib/rabbitmq/.erlang.cookie" in script
        assert "-m 0400" in script
        assert "exec docker-entrypoint.sh rabbitmq-server" in script
        for key in ("ssl_options.cacertfile", "ssl_options.certfile", "ssl_options.keyfile"):
            assert conf[key] in secrets, f"{name}: {key} {conf[key]} is not mounted"
        assert service["healthcheck"]["test"]
    assert len(cookies) == 1, "the nodes of one cluster share one cookie"


def test_compose_runs_postgresql_with_a_healthcheck_and_its_password_from_a_secret() -> None:
    compose = kit.compose_file()
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    environment = postgres["environment"]
    assert "POSTGRES_PASSWORD" not in environment
    assert environment["POSTGRES_PASSWORD_FILE"] in kit.targets(postgres, "secrets", "/run/secrets")


def test_compose_runs_two_replicas_of_one_node_that_differ_only_in_their_name() -> None:
    """At least two replicas: the same command, config and secrets, different MLANET_REPLICA
    and state volumes, each started once the brokers and the database are healthy."""
    compose = kit.compose_file()
    services = compose["services"]
    nodes = kit.node_services(compose)
    assert len(nodes) >= 2
    names = [service["environment"]["MLANET_REPLICA"] for service in nodes.values()]
    assert all(names)
    assert len(set(names)) == len(names)
    kit.compose_node_toml(compose)  # one config for all
    first = next(iter(nodes.values()))
    for service in nodes.values():
        kit.cli_accepts(service["command"])
        assert service["image"] == first["image"]
        assert service["secrets"] == first["secrets"]
        assert service["configs"] == first["configs"]
        for dependency in [*kit.rabbitmq_services(compose), "postgres"]:
            assert service["depends_on"][dependency] == {"condition": "service_healthy"}
            assert services[dependency]["healthcheck"]["test"]
        assert service["read_only"] is True
        assert "ALL" in service["cap_drop"]
    states = [kit.compose_volumes(service)["/var/lib/mlanet"] for service in nodes.values()]
    assert len(set(states)) == len(states), "each replica has its own state volume"
    assert all(state in compose["volumes"] for state in states)


def test_compose_node_toml_is_a_valid_config_whose_every_file_is_mounted(tmp_path: Path) -> None:
    """The replicas' node.toml loads with the node's own loader and has [database]; every file
    and folder it names is mounted in each replica (a secret, a config or a volume), its
    database is the postgres service with the same password file, its broker the cluster."""
    compose = kit.compose_file()
    text, config_path = kit.compose_node_toml(compose)
    config = kit.validated(text, config_path, tmp_path)
    assert config.database is not None, "replicas share their state only through [database]"
    named = kit.named_paths(text, PurePosixPath(config_path).parent)
    nodes = kit.node_services(compose)
    for name, service in nodes.items():
        for key_path, path in named.items():
            if key_path not in BROKER_ONLY:
                assert kit.compose_provides(service, path), f"{name}: {'.'.join(key_path)} {path}"
        assert kit.under(named[("state_dir",)], "/var/lib/mlanet")
    postgres = compose["services"]["postgres"]
    url = urlsplit(config.database.url)
    assert url.hostname in compose["services"]
    assert compose["services"][url.hostname] is postgres
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.path.lstrip("/") == postgres["environment"]["POSTGRES_DB"]
    database_secret = kit.targets(postgres, "secrets", "/run/secrets")[
        postgres["environment"]["POSTGRES_PASSWORD_FILE"]
    ]
    for service in nodes.values():
        secrets = kit.targets(service, "secrets", "/run/secrets")
        assert secrets[str(named[("database", "password_file")])] == database_secret
    rabbits = kit.rabbitmq_services(compose)
    for host in (config.broker.host, urlsplit(config.broker.management_url).hostname):
        in_all = all(host in s["networks"]["default"]["aliases"] for s in rabbits.values())
        assert host in rabbits or in_all, f"{host} is not the RabbitMQ cluster"


def test_compose_link_files_are_where_the_brokers_and_the_replicas_read_them() -> None:
    """[link.tls] names paths the brokers read (they run the shovels): the certificate and key
    are mounted in every RabbitMQ node, the certificate in every replica, and the peers' CA
    folder is one volume the replicas write and the brokers read."""
    compose = kit.compose_file()
    text, config_path = kit.compose_node_toml(compose)
    named = kit.named_paths(text, PurePosixPath(config_path).parent)
    folder = str(named[("link", "tls", "ca_folder")])
    volumes = set()
    for name, service in kit.rabbitmq_services(compose).items():
        for key in ("cert_file", "key_file"):
            path = str(named[("link", "tls", key)])
            assert path in kit.targets(service, "secrets", "/run/secrets"), f"{name}: {path}"
        volumes.add(kit.compose_volumes(service)[folder])
    for service in kit.node_services(compose).values():
        volumes.add(kit.compose_volumes(service)[folder])
    assert len(volumes) == 1
    assert volumes <= set(compose["volumes"])


def test_compose_secrets_are_files_declared_once_and_documented() -> None:
    """Every secret a service uses is declared at the top, from a file in secrets/ that
    secrets/README.md lists; none is unused; no environment variable carries a password, a
    cookie or a token (only the path of its file)."""
    compose = kit.compose_file()
    declared = compose["secrets"]
    listed = (DOCKER / "secrets" / "README.md").read_text()
    used = set()
    for name, service in compose["services"].items():
        used |= set(kit.targets(service, "secrets", "/run/secrets").values())
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
    compose = kit.compose_file()
    text, _ = kit.compose_node_toml(compose)
    operator = tomllib.loads(text)["operator"]
    assert operator["host"] not in LOOPBACK
    port = operator["port"]
    prometheus = compose["services"]["prometheus"]
    config_file = next(
        source
        for target, source in kit.compose_volumes(prometheus).items()
        if target == "/etc/prometheus/prometheus.yml"
    )
    scrape = yaml.safe_load((DOCKER / config_file).read_text())
    targets = {
        target
        for job in scrape["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    nodes = kit.node_services(compose)
    assert {f"{name}:{port}" for name in nodes} <= targets
    for service in nodes.values():
        assert f":{port}/healthz" in " ".join(service["healthcheck"]["test"])


def test_grafana_provisions_prometheus_and_the_node_dashboard_file() -> None:
    """Grafana's provisioning folder is mounted where Grafana reads it; the dashboard provider
    reads a folder that holds deploy/grafana/mlanet-node.json; the data source is the
    Prometheus service."""
    compose = kit.compose_file()
    grafana = compose["services"]["grafana"]
    volumes = kit.compose_volumes(grafana)
    provisioning = (DOCKER / volumes["/etc/grafana/provisioning"]).resolve()
    assert provisioning == (DEPLOY / "grafana" / "provisioning").resolve()
    providers = yaml.safe_load((provisioning / "dashboards" / "mlanet.yaml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    dashboards = [
        (DOCKER / source).resolve()
        for target, source in volumes.items()
        if kit.under(PurePosixPath(target), folder) and target.endswith(".json")
    ]
    assert dashboards == [DASHBOARD.resolve()]
    assert DASHBOARD.is_file()
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    url = urlsplit(sources["datasources"][0]["url"])
    assert sources["datasources"][0]["type"] == "prometheus"
    assert url.hostname in compose["services"]
    assert compose["services"][url.hostname] is compose["services"]["prometheus"]
    assert url.port == 9090
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] in kit.targets(
        grafana, "secrets", "/run/secrets"
    )


# --- Kubernetes ----------------------------------------------------------------------------------
def test_kubernetes_runs_the_node_as_two_unprivileged_replicas() -> None:
    """A Deployment of two or more replicas, each named after its pod (MLANET_REPLICA from the
    downward API), unprivileged as the image's user, ready when /healthz answers and alive
    while the operator port answers."""
    docs = kit.manifests()
    deployment = kit.only(docs, "Deployment", "mlanet-node")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    text, _, pod, container = kit.k8s_node_toml(docs)
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["fsGroup"] == kit.image_uid()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    kit.cli_accepts(container["args"])
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
    docs = kit.manifests()
    text, config_path, pod, container = kit.k8s_node_toml(docs)
    config = kit.validated(text, config_path, tmp_path)
    assert config.database is not None, "replicas share their state only through [database]"
    assert tomllib.loads(text)["operator"]["host"] not in LOOPBACK
    for key_path, path in kit.named_paths(text, PurePosixPath(config_path).parent).items():
        if key_path not in BROKER_ONLY:
            assert kit.k8s_provides(pod, container, path, docs), f"{'.'.join(key_path)} {path}"


def test_kubernetes_runs_a_rabbitmq_cluster_of_three() -> None:
    """A StatefulSet of three under a headless Service, each node named as the classic config
    lists it, the cookie copied owner-only from its Secret, TLS files and the link files at
    the paths rabbitmq.conf and the node's config name."""
    docs = kit.manifests()
    statefulset = kit.only(docs, "StatefulSet", "rabbitmq")
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    headless = kit.only(docs, "Service", spec["serviceName"])
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
    config_map = kit.only(docs, "ConfigMap", "rabbitmq-config")["data"]
    conf = kit.rabbitmq_conf(config_map["rabbitmq.conf"])
    name = statefulset["metadata"]["name"]
    assert kit.cluster_nodes(conf) == {f"rabbit@{name}-{i}.{spec['serviceName']}" for i in range(3)}
    assert {"rabbitmq_management", "rabbitmq_shovel"} <= kit.enabled_plugins(
        config_map["enabled_plugins"]
    )
    for key in ("ssl_options.cacertfile", "ssl_options.certfile", "ssl_options.keyfile"):
        assert kit.k8s_provides(pod, container, PurePosixPath(conf[key]), docs), key
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
    (key,) = kit.volume_keys(volumes[cookie["name"]], docs) or {""}
    assert (
        f"-m 0400 {cookie_mount['mountPath']}/{key} /var/lib/rabbitmq/.erlang.cookie"
        in init["command"][-1]
    )
    text, config_path, node_pod, node = kit.k8s_node_toml(docs)
    named = kit.named_paths(text, PurePosixPath(config_path).parent)
    for key_path in (("link", "tls", "cert_file"), ("link", "tls", "key_file")):
        assert kit.k8s_provides(pod, container, named[key_path], docs), key_path
    folder = str(named[("link", "tls", "ca_folder")])
    claims = set()
    for each_pod, each in ((pod, container), (node_pod, node)):
        mount = next(m for m in each["volumeMounts"] if m["mountPath"] == folder)
        volume = next(v for v in each_pod["volumes"] if v["name"] == mount["name"])
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    (claim,) = claims
    assert "ReadWriteMany" in kit.only(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"]


def test_kubernetes_secrets_come_from_files_and_every_reference_is_made() -> None:
    """kustomization.yaml lists every manifest and makes every Secret the manifests use (with
    the key asked for) from a file in secrets/ that README.md lists; no manifest holds a
    Secret's value; every ConfigMap used is a manifest's, a generated one, or one README.md
    tells the operator to create."""
    docs = kit.manifests()
    kustomization = kit.kustomization()
    manifests = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    assert not [d for d in docs if d["kind"] == "Secret"], "a Secret's value in a manifest"
    generated = kit.generated("secret")
    readme = (KUBERNETES / "README.md").read_text()
    for generator in kustomization["secretGenerator"]:
        for entry in generator["files"]:
            path = PurePosixPath(entry.split("=", 1)[-1])
            assert path.parent == PurePosixPath("secrets"), entry
            assert f"`secrets/{path.name}`" in readme, f"README.md does not list {path}"
    references = list(kit.secret_references(docs))
    assert references
    for name, key in references:
        assert name in generated, f"Secret {name} is made nowhere"
        assert key is None or key in generated[name], f"Secret {name} has no key {key}"
    assert {name for name, _ in references} == set(generated), "a Secret nobody uses"
    made = set(kit.config_map_keys(docs)) | set(
        re.findall(r"kubectl create configmap (\S+)", readme)
    )
    for where, value in kit.walk(docs):
        if where[-2:] == ("configMap", "name"):
            assert value in made, f"ConfigMap {value} is made nowhere"


# --- systemd -------------------------------------------------------------------------------------
def test_systemd_unit_runs_the_node_and_restarts_it() -> None:
    service = kit.systemd_unit("mlanet-node.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/mlanet")
    kit.cli_accepts(argv[1:])
    assert service["Restart"] == "on-failure"
    assert service["User"] != "root"
    assert service["NoNewPrivileges"] == "true"


@pytest.mark.parametrize("section", ["Service", "Install"])
def test_systemd_template_runs_replica_i_hardened_as_the_single_unit(section: str) -> None:
    """mlanet-node@.service runs the same command with --replica %i, and every setting of the
    single unit's [Service] and [Install] (user, restart, hardening, state folder) is the same."""
    single = kit.systemd_unit("mlanet-node.service")[section]
    template = kit.systemd_unit("mlanet-node@.service")[section]
    for key, value in single.items():
        if key != "ExecStart":
            assert template.get(key) == value, key
    if section == "Service":
        argv = shlex.split(template["ExecStart"])
        assert argv[argv.index("--replica") + 1] == "%i"
        assert argv[: argv.index("--replica")] == shlex.split(single["ExecStart"])
        kit.cli_accepts(argv[1:])


def test_the_replicas_name_reaches_the_node_as_its_deploy_files_give_it() -> None:
    """compose and Kubernetes give a replica its name in MLANET_REPLICA, systemd as --replica
    %i: ``mlanet node run`` takes both (a pod's name is a valid replica name)."""
    from typer.testing import CliRunner

    from mlanet.nodes.cli.app import app
    from mlanet.nodes.runtime.replicas import REPLICA_NAME

    result = CliRunner().invoke(app, ["node", "run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--replica" in result.output
    assert "MLANET_REPLICA" in result.output

    for name in ("node-1", "node-2", "mlanet-node-7d9c8b5f4-x2x9k", "casc-1"):
        assert REPLICA_NAME.match(name), name
