#!/bin/sh
# keepalived calls this on every VRRP transition: TYPE NAME STATE PRIORITY.
# xlb needs nothing from it (both nodes keep their flow tables in sync and
# forward whatever reaches them); it records the role for operators.
logger -t xlb-vrrp "instance $2 is now $3 (priority $4)"
