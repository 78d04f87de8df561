#!/bin/bash
# ExecStopPost of ocedge.service: power the instance off when, and only when, the
# container exited "asleep" (EXIT_ASLEEP in infra/lifecycle.py: idle and saved, or
# nothing was asked of this host). A stop an operator or the OS asked for (exit 0), a
# crash (restarted by systemd) or a kill leaves the instance as it is.
#
# systemd sets EXIT_CODE ("exited", "killed", "dumped") and EXIT_STATUS (the status,
# or the signal's name) for ExecStopPost= (freedesktop.org, systemd.exec(5),
# "Environment variables set or propagated by the service manager").
set -euo pipefail

asleep=10
if [ "${EXIT_CODE:-}" = exited ] && [ "${EXIT_STATUS:-}" = "$asleep" ]; then
    echo "ocedge: the container is asleep: powering off"
    # --no-block: this runs inside the unit's own stop; the poweroff job waits for it.
    exec systemctl poweroff --no-block
fi
