#!/bin/sh
# The container's network, the original tool's way, then the command.
#
# Started through hpktainer's hooks, tap0 is there already (address, route): nothing to do.
# Started without them (plain Apptainer, as the original did), the environment says where
# to connect: HPK_SOCKET_PATH (the bubble side's hpk-net-daemon server), HPK_IP (address,
# optionally with /PREFIX; default /24) and HPK_GATEWAY_IP. A client hpk-net-daemon makes
# tap0 and carries its frames; tap0 gets the address and the default route.
set -eu

if ip link show tap0 >/dev/null 2>&1; then
    exec "$@"
fi
if [ -z "${HPK_SOCKET_PATH:-}" ]; then
    # No overlay asked for: run as a plain container.
    exec "$@"
fi
for v in HPK_IP HPK_GATEWAY_IP; do
    eval "value=\${$v:-}"
    if [ -z "$value" ]; then
        echo "hpk-entrypoint: HPK_SOCKET_PATH is set but $v is not: set both HPK_IP and HPK_GATEWAY_IP" >&2
        exit 64
    fi
done
case "$HPK_IP" in
*/*) address=$HPK_IP ;;
*) address=$HPK_IP/${HPK_PREFIX_LEN:-24} ;;
esac

hpk-net-daemon -mode client -socket "$HPK_SOCKET_PATH" -tap tap0 -create-tap ${HPK_MTU:+-mtu "$HPK_MTU"} &
daemon=$!
tries=0
until ip link show tap0 >/dev/null 2>&1; do
    if ! kill -0 "$daemon" 2>/dev/null; then
        echo "hpk-entrypoint: hpk-net-daemon exited before creating tap0 (is /dev/net/tun usable here?)" >&2
        exit 69
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 100 ]; then
        echo "hpk-entrypoint: tap0 did not appear within 5 s" >&2
        exit 69
    fi
    sleep 0.05
done
ip addr add "$address" dev tap0
ip link set tap0 up
ip route add default via "$HPK_GATEWAY_IP" dev tap0
exec "$@"
