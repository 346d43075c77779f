#!/usr/bin/env bash
# On the lab's gateway: tells the enforcer what the platform does when a VM of the lab changes its power state.
# The Vagrantfile's triggers run it (as root, through SSH to the gateway); gateway.sh installs it.
#   lifecycle.sh halt NAME      `vagrant halt`: the portal's Stop, which deallocates: the next start pulls the
#                               subscription's current policy
#   lifecycle.sh up NAME        `vagrant up`: Start. A VM the enforcer still counts as running powered itself
#                               off from inside (a guest shutdown): a stop that keeps the allocation, so it
#                               keeps the policy it pulled. A VM `vagrant destroy` removed comes back from lab.yml.
#   lifecycle.sh destroy NAME   `vagrant destroy`: the VM is removed
set -euo pipefail
ENFORCER=/usr/local/bin/enforcer
LAB=/vagrant-project/vagrant/lab.yml
event=${1:-} name=${2:-}
if [ -z "$name" ] || [ $# -ne 2 ]; then
    echo "usage: lifecycle.sh halt|up|destroy NAME" >&2
    exit 2
fi

state_of() {
    "$ENFORCER" vm show "$1" --json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])'
}

case $event in
    halt) "$ENFORCER" vm deallocate "$name" ;;
    destroy) "$ENFORCER" vm remove "$name" ;;
    up)
        if ! state=$(state_of "$name"); then
            "$ENFORCER" apply "$LAB" >/dev/null
            echo "$name is back from $LAB"
            state=$(state_of "$name")
        fi
        if [ "$state" = running ]; then
            "$ENFORCER" vm stop "$name" >/dev/null  # it shut itself down: still allocated
        fi
        "$ENFORCER" vm start "$name"
        ;;
    *)
        echo "lifecycle.sh: unknown event '$event'; usage: lifecycle.sh halt|up|destroy NAME" >&2
        exit 2
        ;;
esac
