# Root filesystem of the mynet managed plugin: a Debian base with iptables and
# the static mynet binary. Docker runs it with config.json (entrypoint, socket,
# capabilities, mounts); `make plugin` (scripts/build-plugin.sh) builds it,
# exports it to build/plugin/rootfs and runs `docker plugin create`.
#
# BASE defaults to an image build-plugin.sh makes locally with debootstrap, so
# no registry is needed. With a registry, --build-arg BASE=debian:bookworm-slim
# works too: iptables is then installed below.
ARG BASE=mynet-plugin-base:bookworm
FROM ${BASE}

# mynet must use the iptables backend (nft or legacy) of the host's dockerd:
# it hooks into Docker's chains (DOCKER-USER, the isolation chains), which
# exist only in that backend, and a packet must pass the rules of both
# backends, so an accept in the other one cannot override a drop of Docker's.
# build-plugin.sh passes the host's backend.
ARG IPTABLES_BACKEND=nft
RUN if ! command -v iptables >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends iptables && rm -rf /var/lib/apt/lists/*; \
    fi \
 && update-alternatives --set iptables "/usr/sbin/iptables-${IPTABLES_BACKEND}" \
 && update-alternatives --set ip6tables "/usr/sbin/ip6tables-${IPTABLES_BACKEND}" \
 && mkdir -p /run/docker/plugins /var/lib/mynet

# CGO_ENABLED=0 (make build): the binary needs no libc of the base.
COPY bin/mynet /mynet

# Only so that `docker create` accepts the image; the plugin's entrypoint and
# flags come from config.json.
ENTRYPOINT ["/mynet"]
