#!/bin/sh
# Withdraws this node's VIP announcements while xlb is unhealthy, announces
# them again once it is healthy (GET /healthz on xlb's admin address: 200
# only while the XDP program is attached, the maps are loaded and, with
# [sync], the initial pull is done). Run it from systemd (Restart=always).
ADMIN=${ADMIN:-127.0.0.1:9900}
state=unknown
while :; do
    if curl -fsS -m 1 -o /dev/null "http://$ADMIN/healthz"; then want=enable; else want=disable; fi
    if [ "$want" != "$state" ]; then
        birdc "$want" xlb_vips >/dev/null && state=$want
        logger -t xlb-bgp "xlb_vips: $want"
    fi
    sleep 1
done
