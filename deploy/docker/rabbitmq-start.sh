#!/bin/sh
# Starts one RabbitMQ node of the cluster (compose.yaml), as root before the image's entrypoint
# drops to the rabbitmq user: the shared Erlang cookie comes from its secret file, copied
# owner-only (Erlang refuses a cookie others can read), and the administrator's password from
# its secret file (RabbitMQ creates that user at the cluster's first start only).
set -eu
install -o rabbitmq -g rabbitmq -m 0400 /run/secrets/erlang-cookie /var/lib/rabbitmq/.erlang.cookie
# The peers' CA files: the node's replicas write them here (their image's user has uid 999, as
# rabbitmq has in this image), the shovels read them.
chown rabbitmq:rabbitmq /etc/rabbitmq/peers
RABBITMQ_DEFAULT_PASS="$(cat /run/secrets/rabbitmq-admin-password)"
export RABBITMQ_DEFAULT_PASS
exec docker-entrypoint.sh rabbitmq-server
